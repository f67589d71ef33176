#!/usr/bin/env bash
# One CPU machine's row of the README's "How long the default takes" (issue 12), as a newcomer gets it:
#   1. the CPU: lscpu's model name and its kind (AMX, AVX512-BF16 or AVX2 only);
#   2. a fresh clone of this checkout's HEAD: `make install`, then `make repro`, each timed, with an
#      empty Inductor cache (a new machine has none); the train stage's loop seconds and precision,
#      its test PSNR after each epoch, and the scores on Set5 / Set14 / BSD100;
#   3. bench/infer_speed.py --repeat 3 --engines (best of 3) on the model that run registered;
#   4. with CPU_SH_CI=1, .ci/run from a second fresh clone, started as CI starts it, timed.
# Writes bench/results/cpu-<date>-<kind>.md in this checkout (never over an earlier one) and prints it.
#   CPU_SH_HOLD=avx2     hold torch to AVX2 (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY): how an AVX2-only
#                        CPU computes, on a bigger one (an approximation; the results file says so)
#   CPU_SH_WORK=/tmp/cpuw  the scratch folder (emptied first); the checkout is left as it was
# Usage, from the repo root, with nothing else running (about 20-35 minutes on 2 cores):
#   bash bench/cpu.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${CPU_SH_WORK:-/tmp/cpuw}
case "$WORK" in /|"$REPO"|"$HOME"|"") echo "CPU_SH_WORK=$WORK: not a scratch folder" >&2; exit 1;; esac
SHARED=$(cd "$REPO/.." && pwd)/shared  # datasets: ../shared from the project root, as in CI
export SRCTL_DATA_MIRROR="${SRCTL_DATA_MIRROR:-$SHARED/datasets/BSDS300}"

flags=$(grep -m1 '^flags' /proc/cpuinfo)
if [[ $flags == *amx_tile* ]]; then kind=amx
elif [[ $flags == *avx512_bf16* ]]; then kind=avx512bf16
elif [[ $flags == *avx2* ]]; then kind=avx2
else kind=other; fi
if [[ -n ${CPU_SH_HOLD:-} ]]; then
  [[ ${CPU_SH_HOLD,,} == avx2 ]] || { echo "CPU_SH_HOLD=$CPU_SH_HOLD: only avx2" >&2; exit 1; }
  export ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
  kind=$kind-held-avx2
fi
model=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
family=$(lscpu | sed -n 's/^CPU family: *//p' | head -1)
cpumodel=$(lscpu | sed -n 's/^Model: *//p' | head -1)

results=$REPO/bench/results/cpu-$(date -u +%F)-$kind.md
n=1
while [[ -e $results ]]; do n=$((n + 1)); results=${results%.md}; results=${results%-run*}-run$n.md; done

rm -rf "$WORK" && mkdir -p "$WORK"
ln -s "$SHARED" "$WORK/shared"
git clone -q "$REPO" "$WORK/main"
export TORCHINDUCTOR_CACHE_DIR=$WORK/inductor

# timed LOG CMD...: runs CMD in the clone, its output in $WORK/LOG; prints its wall seconds
timed() {
  local log=$1 s; shift
  s=$(date +%s.%N)
  (cd "$WORK/main" && "$@") >"$WORK/$log" 2>&1 || { echo "failed: $* (see $WORK/$log)" >&2; tail -n 5 "$WORK/$log" >&2; exit 1; }
  awk -v a="$(date +%s.%N)" -v b="$s" 'BEGIN{printf "%.0f", a - b}'
}

echo "cpu.sh: $model ($kind), clone of $(git -C "$REPO" rev-parse --short HEAD) in $WORK" >&2
install_s=$(timed install.log make install)
echo "cpu.sh: make install ${install_s} s; make repro ..." >&2
repro_s=$(timed repro.log make repro)
echo "cpu.sh: make repro ${repro_s} s; infer_speed ..." >&2
MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false timed infer.log \
  bash -c ".venv/bin/python bench/infer_speed.py --repeat 3 --engines 2>'$WORK/infer.err'" >/dev/null
if [[ ${CPU_SH_CI:-0} == 1 ]]; then
  echo "cpu.sh: .ci/run ..." >&2
  mkdir -p "$WORK/ci" && ln -s "$SHARED" "$WORK/ci/shared" && git clone -q "$REPO" "$WORK/ci/main"
  ci_s=$( (cd "$WORK/ci/main" && s=$(date +%s); TORCHINDUCTOR_CACHE_DIR=$WORK/ci/inductor bash -c 'trap "" INT; CI=true exec bash .ci/run' \
    >"$WORK/ci.log" 2>&1; echo $(( $(date +%s) - s ))) )
fi

"$WORK/main/.venv/bin/python" - "$WORK" "$results" "$model" "$family" "$cpumodel" "$kind" "$install_s" "$repro_s" "${ci_s:-}" <<'EOF'
import csv, json, re, subprocess, sys
from pathlib import Path

work, results, model, family, cpumodel, kind, install_s, repro_s, ci_s = sys.argv[1:]
clone = Path(work) / "main"
train = json.loads((clone / "metrics/train.json").read_text())
bench = json.loads((clone / "metrics/benchmark.json").read_text())
commit = subprocess.run(["git", "-C", clone, "log", "-1", "--format=%h %cs"], capture_output=True, text=True).stdout.strip()
total = int(install_s) + int(repro_s)
scores = " / ".join(f"{bench[s]['psnr']:.2f}" for s in ("Set5", "Set14", "BSD100"))
held = "held to AVX2 (`ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`), " if "held" in kind else ""
lines = [
    f"# CPU row: {model} (family {family}, model {cpumodel}; {kind}), 2 cores",
    "",
    f"`bash bench/cpu.sh` on {commit}, {held}a fresh clone, an empty Inductor cache.",
    "",
    "| machine | precision | `make repro`, fresh clone, install included | train stage | Set5 / Set14 / BSD100 |",
    "| --- | --- | --- | --- | --- |",
    f"| {model} (family {family}, model {cpumodel}; {kind}) | {train['precision']} | "
    f"**{total // 60} min {total % 60:02d} s ({total} s)**: install {install_s} s, `make repro` {repro_s} s | "
    f"{train['train_seconds']:.0f} s (the loop, compiling included; {train['steps']} steps) | **{scores}** |",
    "",
    "Test PSNR (BSDS300, 100 images) after each epoch: "
    + ", ".join(f"{float(r['test_psnr']):.2f} ({float(r['seconds']):.0f} s)"
                for r in csv.DictReader((clone / "metrics/train_log.csv").open())),
    "",
    "`python bench/infer_speed.py --repeat 3 --engines` (best of 3):",
    "",
    *("    " + ln for ln in (Path(work) / "infer.log").read_text().splitlines()),
]
if ci_s:
    log = (Path(work) / "ci.log").read_text(errors="replace")
    summary = re.findall(r"=+ (.*(?:passed|failed).*) =+", log)
    lines += ["", f"`.ci/run` from a fresh clone (SIGINT ignored, as a background job): {int(ci_s) // 60} min "
              f"{int(ci_s) % 60:02d} s wall; pytest: {summary[-1] if summary else 'no summary (see ci.log)'}"]
Path(results).write_text("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"\nwritten: {results}", file=sys.stderr)
EOF
