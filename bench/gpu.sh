#!/usr/bin/env bash
# One prepared GPU check (issue 14), for a bare lent machine with no network: in at most ~6 minutes
#   1. the default pipeline, `dvc repro` on params.yaml as committed: download + prepare, then
#      bench/gpu_check.py (the captured training step against the eager one, ms/step of each shape),
#      bench/train_phases.py (where the train stage's time goes, phase by phase),
#      the train stage alone (its wall time), then evaluate, benchmark (Set5/Set14/BSD100), register;
#   2. `srctl video` on a 300-frame 1280x720 clip with an AAC track (bench/video_speed.py makes it from a
#      BSDS300 photo panned): the default options, --preset ultrafast --batch 16, --encoders 3; then
#      each stage alone (bench/video_stages.py);
#   3. `python bench/train_throughput.py --device cuda`;
#   4. the full-quality recipe (`make gpu-full`'s, GPU_FULL in the Makefile; GPU_SH_PROFILE=FULL_PROFILE
#      for `make full`'s) with the time that is left: when its steps do not fit, it is stopped
#      (checkpoint kept) and the results give its steps/s and the extrapolated train time instead of
#      scores;
# and writes $OUT/gpu_results.md and .json (GPU, torch, each command, its wall time, its numbers),
# $OUT/gpu.log (this script's progress) and $OUT/gpu_logs.tar.gz (every command's output, metrics).
#
# First, here: bash bench/gpu_prepare.sh (fills the ignored .whl/ and .gpu-data/), then on the device,
# from the repo root with carry [".whl", ".gpu-data"]:   bash bench/gpu.sh
# Everything runs in copies under $GPU_SH_WORK (default /tmp/gpuw): the checkout is left as it was.
#   GPU_SH_BUDGET=350        seconds for the whole script (the full profile gets what the rest leaves)
#   GPU_SH_FULL_EPOCHS=12    the full-quality recipe's epochs (default: the recipe's own)
#   GPU_SH_TP_SECONDS=5      measuring time per loop of train_throughput.py
#   GPU_SH_VIDEO_REPEAT=1    runs of each video step, the best one counts (video_speed.py --repeat)
#   GPU_SH_VIDEO_OPTIONS="--encoders 2;--encoders 4"   more srctl video runs, one set of options per ';'
#   PYTHON=python3           the Python that has torch
#   GPU_SH_SKIP="gpu_check video train_throughput"   steps to leave out, by name or by the part
#                            before its first '_' (a second run that wants the full profile's time,
#                            say; "full" leaves out the full profile)
#   GPU_SH_RECIPES="k=v k=v;k=v ..."   recipes to train and score with bench/time_to_quality.py
#                            before the full profile, one set of overrides per ';'
#   GPU_SH_RECIPES_BASE="k=v ..."   overrides that change the data (train.degradation=real, say): the
#                            recipes then run in a copy whose prepare stage ran with them
#   GPU_SH_RECIPE_TIMEOUT=120  seconds for each recipe
#   GPU_SH_DRY=1             a dry run on a CPU: tiny data, a few steps, a 10-frame clip, --device cpu,
#                            the project's own environment (PYTHON=.venv/bin/python) instead of .whl
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DRY=${GPU_SH_DRY:-0}
# absolute but not resolved (a venv's python is a link): the steps run in other folders
PY=$(realpath -s "$(command -v "${PYTHON:-python3}")") || { echo "no ${PYTHON:-python3}" >&2; exit 1; }
WORK=${GPU_SH_WORK:-/tmp/gpuw}
OUT=${OUT:-/tmp/gpu-out}
BUDGET=${GPU_SH_BUDGET:-$([ "$DRY" = 1 ] && echo 1500 || echo 350)}
PROFILE=${GPU_SH_PROFILE:-GPU_FULL}  # which of the Makefile's recipes step 4 runs: GPU_FULL or FULL_PROFILE
FULL_PROFILE=$(sed -n "s/^$PROFILE *:= *//p" "$REPO/Makefile")  # `make gpu-full`'s (`make full`'s) overrides
FULL_EPOCHS=${GPU_SH_FULL_EPOCHS:-$(grep -o 'train.epochs=[0-9]*' <<<"$FULL_PROFILE" | cut -d= -f2)}
TP_SECONDS=${GPU_SH_TP_SECONDS:-5}
RESERVE=15  # seconds kept for the summary and the log archive
T0=$(date +%s.%N)
DEADLINE=$(( ${T0%.*} + BUDGET ))
LOGS=$WORK/logs
STEPS=$LOGS/steps.tsv
mkdir -p "$OUT"
case "$WORK" in /|"$REPO"|"$HOME"|"") echo "GPU_SH_WORK=$WORK: not a scratch folder" >&2; exit 1;; esac
rm -rf "$WORK" && mkdir -p "$WORK/bin" "$LOGS" || exit 1
LOG=$OUT/gpu.log
: >"$LOG"
: >"$STEPS"

elapsed() { awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN{printf "%.1f", a - b}'; }
log() { printf '[%s +%6ss] %s\n' "$(date -u +%H:%M:%S)" "$(elapsed)" "$*" | tee -a "$LOG"; }
remaining() { echo $(( DEADLINE - $(date +%s) )); }
# cap WANT: WANT seconds, or what is left before the deadline less RESERVE if that is less
cap() { local r=$(( $(remaining) - RESERVE )); (( r < $1 )) && echo "$r" || echo "$1"; }

# step NAME TIMEOUT DIR CMD...: runs CMD in DIR under `timeout`, output in $LOGS/NAME.log; records
# name, exit code, wall seconds, timeout, dir, start (epoch seconds) and command in steps.tsv. A step
# with under 10 s left is skipped.
step() {
  local name=$1 to=$2 dir=$3; shift 3
  if [[ " ${GPU_SH_SKIP:-} " == *" ${name%%_*} "* || " ${GPU_SH_SKIP:-} " == *" $name "* ]]; then
    log "SKIP  $name: GPU_SH_SKIP"
    return 125
  fi
  if (( to < 10 )); then
    log "SKIP  $name: ${to}s left in the budget"
    printf '%s\tskipped\t0\t%s\t%s\t%s\t%s\n' "$name" "$to" "$dir" "$(date +%s.%N)" "$*" >>"$STEPS"
    return 125
  fi
  log "START $name (timeout ${to}s, in ${dir/#$WORK/\$WORK}): $*"
  local s e rc
  s=$(date +%s.%N)
  (cd "$dir" && exec timeout --signal=TERM --kill-after=15 "$to" "$@") >"$LOGS/$name.log" 2>&1
  rc=$?
  e=$(date +%s.%N)
  local wall
  wall=$(awk -v a="$e" -v b="$s" 'BEGIN{printf "%.1f", a - b}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$wall" "$to" "$dir" "$s" "$*" >>"$STEPS"
  log "END   $name: exit $rc$( ((rc == 124)) && echo ' (timed out)'), ${wall}s"
  if (( rc != 0 )); then tail -n 12 "$LOGS/$name.log" | sed 's/^/      | /' | tee -a "$LOG"; fi
  summarize >/dev/null 2>&1  # the results file stays current if the run is cut off
  return $rc
}

# copy_run DEST: a copy of the default run's repo ($WORK/repo) with its data and cache but without its
# run (MLflow store, checkpoint, metrics, run files), for a recipe of its own
copy_run() {
  cp -a "$WORK/repo" "$1" && rm -rf "$1/mlflow.db" "$1/mlartifacts" "$1/models/checkpoint.pt" "$1/.dvc/tmp" \
    "$1/metrics/"*.json "$1/metrics/train_log.csv" "$1/models/"{mlflow_run,registered}.json
}

# setp FILE key.sub=VALUE...: a params.yaml of a copy (never the checkout's), VALUE read as YAML
setp() { "$PY" "$REPO/bench/set_params.py" "$1" "$@"; }

# unxz_tar FILE.tar.xz DIR (Python's lzma where the image has no xz)
unxz_tar() {
  if command -v xz >/dev/null; then xz -T0 -dc "$1" | tar -C "$2" -xf -
  else "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2], filter="fully_trusted")' "$1" "$2"; fi
}

summarize() {
  "$PY" - "$WORK" "$OUT" "$DRY" "$FULL_EPOCHS" "$BUDGET" "$(elapsed)" "$PROFILE: $FULL_PROFILE" <<'EOF'
import csv, json, os, re, sys
from pathlib import Path

work, out, dry, full_epochs, budget, elapsed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]), sys.argv[5], sys.argv[6]
profile = sys.argv[7]
logs = work / "logs"

def read_json(p):
    try:
        return json.loads(Path(p).read_text())
    except (OSError, ValueError):
        return None

def text(name):
    try:
        return (logs / f"{name}.log").read_text(errors="replace")
    except OSError:
        return ""

steps = {}
for row in (logs / "steps.tsv").read_text().splitlines() if (logs / "steps.tsv").exists() else []:
    name, rc, wall, to, d, start, cmd = row.split("\t", 6)
    steps[name] = {"exit": rc, "wall_s": float(wall), "timeout_s": int(to), "cwd": d.replace(str(work), "$WORK"), "start": float(start), "command": cmd}

# how busy all the CPUs were during each step, from /proc/stat's jiffies sampled every second
samples = []
for line in (logs / "cpu_stat.log").read_text().splitlines() if (logs / "cpu_stat.log").exists() else []:
    t, _, *jiffies = line.split()
    if len(jiffies) >= 5:
        n = [int(x) for x in jiffies]
        samples.append((float(t), sum(n), sum(n) - n[3] - n[4]))  # total, busy (less idle and iowait)
for st in steps.values():
    inside = [x for x in samples if st["start"] <= x[0] <= st["start"] + st["wall_s"]]
    if len(inside) >= 2 and inside[-1][1] > inside[0][1]:
        st["cpus_busy_pct"] = 100 * (inside[-1][2] - inside[0][2]) / (inside[-1][1] - inside[0][1])

env = read_json(logs / "env.json") or {}
res = {"dry_run": dry, "budget_s": int(budget), "elapsed_s": float(elapsed), "env": env, "steps": steps}

def epoch_rate(rows, steps_per_epoch):
    """steady steps/s from per-epoch cumulative seconds (epoch 1 holds torch.compile's time)."""
    if len(rows) >= 2:
        (e0, s0), (e1, s1) = rows[0], rows[-1]
        return (e1 - e0) * steps_per_epoch / (s1 - s0)
    if rows:
        return rows[0][0] * steps_per_epoch / rows[0][1]
    return None

# 1. the default pipeline
repo = work / "repo"
params = {}
try:
    import yaml
    params = yaml.safe_load((repo / "params.yaml").read_text())
except Exception:
    pass
spe = (params.get("train") or {}).get("steps_per_epoch", 1000)
d = {"params_train": params.get("train"), "train": read_json(repo / "metrics/train.json"),
     "evaluate": read_json(repo / "metrics/evaluate.json"), "benchmark": read_json(repo / "metrics/benchmark.json"),
     "registered": read_json(repo / "models/registered.json")}
try:
    rows = [(int(r["epoch"]), float(r["seconds"])) for r in csv.DictReader(open(repo / "metrics/train_log.csv"))]
    d["first_epoch_s"] = rows[0][1]
    d["steady_steps_per_s"] = epoch_rate(rows, spe)
    if d["steady_steps_per_s"]:
        d["full_profile_extrapolated_train_s"] = rows[0][1] + (full_epochs - 1) * spe / d["steady_steps_per_s"]
except (OSError, KeyError, ValueError, IndexError):
    pass
res["default"] = d

# 2. video
video = []
for name in ["video_default", "video_fast", "video_split"] + sorted((n for n in steps if n.startswith("video_options")), key=lambda n: int(n[13:])):
    t = text(name)
    # with --repeat N every try prints a line: the fastest one counts, as in video_speed.py's "best of N"
    tries = list(re.finditer(r"\((\d+) frames, (\d+x\d+), ([\d.]+) frames/s(?:; working: ([^)]*))?\)", t))
    m = max(tries, key=lambda x: float(x[3]), default=None)
    w = re.search(r"this checkout: [\d.]+ frames/s, process wall ([\d.]+) s", t) or re.search(r"process wall ([\d.]+) s", t)
    if name in steps:
        cmd = steps[name]["command"]
        video.append({"step": name, "options": cmd.split(" -- ", 1)[1] if " -- " in cmd else "default", "frames": int(m[1]) if m else None, "out_size": m[2] if m else None,
                      "fps": float(m[3]) if m else None, "working": m[4] if m else None, "process_wall_s": float(w[1]) if w else None})
res["video"] = video
res["video_stages"] = [l for l in text("video_stages").splitlines() if "frames/s" in l]

# 3. throughput
t = text("train_throughput")
tp = {"lines": [l for l in t.splitlines() if "px/s" in l or l.startswith("torch ")]}
batch, patch = (params.get("train") or {}).get("batch_size", 20), (params.get("train") or {}).get("patch_size", 32)
tp["rows"] = [{"loop": m[1], "M_LR_px_per_s": float(m[2]), "steps_per_s": float(m[2]) * 1e6 / (batch * patch**2) if m[1].startswith("srctl") else None}
              for m in re.finditer(r"^(.*?): ([\d.]+) M LR px/s", t, re.M)]
res["throughput"] = tp
res["gpu_check"] = [l for l in text("gpu_check").splitlines() if l.startswith(("[", "torch "))]
# where the train stage's time goes (bench/train_phases.py), and the recipes tried (time_to_quality.py)
res["train_phases"] = [l for l in text("train_phases").splitlines() if l.startswith(("  ", "[")) and "INFO" not in l]
res["recipes"] = {n: [l for l in text(n).splitlines() if l.startswith(("|", "  "))] for n in steps if n.startswith("recipe")}

# 4. the full profile
full = work / "full"
f = {"epochs_asked": full_epochs, "train": read_json(full / "metrics/train.json") if (full / "metrics/train.json").exists() else None}
hist = read_json(logs / "full_checkpoint.json")
fparams = {}
try:
    fparams = yaml.safe_load((full / "params.yaml").read_text())["train"]
except Exception:
    pass
fspe = fparams.get("steps_per_epoch", spe)
if f["train"] and steps.get("full_train", {}).get("exit") == "0":
    f["completed"] = True
    f["evaluate"] = read_json(full / "metrics/evaluate.json")
    f["benchmark"] = read_json(full / "metrics/benchmark.json")
    try:
        rows = [(int(r["epoch"]), float(r["seconds"])) for r in csv.DictReader(open(full / "metrics/train_log.csv"))]
        f["steady_steps_per_s"] = epoch_rate(rows, fspe)
    except (OSError, KeyError, ValueError, IndexError):
        pass
else:
    f["completed"] = False
    if hist and hist.get("history"):
        rows = [(int(r["epoch"]), float(r["seconds"])) for r in hist["history"]]
        rate = epoch_rate(rows, fspe)
        f.update({"epochs_done": rows[-1][0], "steps_done": rows[-1][0] * fspe, "seconds_at_last_epoch": rows[-1][1],
                  "first_epoch_s": rows[0][1], "steady_steps_per_s": rate,
                  "last_test_psnr": hist["history"][-1].get("test_psnr"),
                  "extrapolated_train_s": rows[0][1] + (full_epochs - 1) * fspe / rate if rate else None})
f["recipe"] = profile
res["full"] = f
(out / "gpu_results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")

# the Markdown
def fmt(x, n=1):
    return "-" if x is None else f"{x:.{n}f}" if isinstance(x, float) else str(x)

L = [f"# GPU results (bench/gpu.sh{', DRY RUN on a CPU: shrunk data and steps, not a measurement' if dry else ''})", ""]
L += [f"- GPU: {env.get('gpu', '?')}", f"- torch {env.get('torch', '?')} (CUDA {env.get('cuda', '-')}), device used: {env.get('device', '?')}, "
      f"Python {env.get('python', '?')}, {env.get('cpus', '?')} CPUs", f"- packages carried: mlflow-skinny {env.get('mlflow', '?')}, dvc {env.get('dvc', '?')}, av {env.get('av', '?')}",
      f"- script: {elapsed} s of a {budget} s budget", ""]
L += ["## Commands", "", f"| step | command (cwd) | exit | wall s | timeout s | all {env.get('cpus', '?')} CPUs busy |", "| --- | --- | --- | --- | --- | --- |"]
for n, s in steps.items():
    busy = f"{s['cpus_busy_pct']:.0f}%" if "cpus_busy_pct" in s else "-"
    L.append(f"| {n} | `{s['command']}` ({s['cwd']}) | {s['exit']} | {s['wall_s']:.1f} | {s['timeout_s']} | {busy} |")
L += ["", "Exit 124: stopped by its timeout. `$WORK/repo` is a copy of the checkout beside `$WORK/shared/datasets` "
      "(BSDS300, Set5, Set14 and BSD100 rebuilt from BSDS300), so params.yaml's `../shared/datasets/...` paths hold as committed.", ""]

L += ["## Default pipeline (`dvc repro`, params.yaml as committed" + (", shrunk for the dry run" if dry else "") + ")", ""]
tr = d.get("train") or {}
ps = (steps.get("dvc_repro_train") or {}).get("wall_s")
L += [f"- train stage wall (`dvc repro train`): **{fmt(ps)} s**; training loop {fmt(tr.get('train_seconds'))} s for {tr.get('steps', '-')} steps on "
      f"{tr.get('device', '-')} ({tr.get('precision', '-')}, compiled: {tr.get('compiled', '-')}); epoch 1 (compile included) {fmt(d.get('first_epoch_s'))} s, "
      f"then {fmt(d.get('steady_steps_per_s'), 0)} steps/s",
      f"- download + prepare {fmt((steps.get('dvc_repro_prepare') or {}).get('wall_s'))} s; evaluate + benchmark + register {fmt((steps.get('dvc_repro_rest') or {}).get('wall_s'))} s; "
      f"the whole `dvc repro` {fmt(sum((steps.get(k) or {}).get('wall_s', 0.0) for k in ('dvc_repro_prepare', 'dvc_repro_train', 'dvc_repro_rest')))} s",
      f"- final test PSNR (train stage, prepared BSDS300 Y) {fmt(tr.get('final_test_psnr'), 2)} dB"]
ev = d.get("evaluate") or {}
if ev:
    L.append(f"- evaluate stage (BSDS300 test images, full size): PSNR {fmt(ev.get('psnr'), 2)} / SSIM {fmt(ev.get('ssim'), 4)}, bicubic {fmt(ev.get('bicubic_psnr'), 2)} / {fmt(ev.get('bicubic_ssim'), 4)}")

def bench_table(b, label):
    if not b:
        return ["(no benchmark.json)"]
    sets = sorted((k for k in b if k != "scale"), key=lambda k: (["Set5", "Set14", "BSD100"] + [k]).index(k))
    cell = lambda r, p: f"{r[p + 'psnr']:.2f} / {r[p + 'ssim']:.4f}" if r and r.get(p + "psnr") is not None else "absent"
    return [f"| x{b.get('scale')} PSNR / SSIM | " + " | ".join(f"{s} ({b[s].get('images')})" for s in sets) + " |",
            "| --- |" + " --- |" * len(sets),
            "| bicubic | " + " | ".join(cell(b[s], "bicubic_") for s in sets) + " |",
            f"| {label} | " + " | ".join(cell(b[s], "") for s in sets) + " |"]

L += [""] + bench_table(d.get("benchmark"), "ESPCN, default") + [""]
if d.get("registered"):
    r = d["registered"]
    L += [f"- registered {r.get('name')} v{r.get('version')} (promoted: {r.get('promoted')})", ""]

L += ["## `srctl video` (bench/video_speed.py: BSDS300 photo panned, AAC track, x3)", "", "| step | frames | output | frames/s (srctl) | stages working (s) | process wall s |", "| --- | --- | --- | --- | --- | --- |"]
for v in video:
    L.append(f"| {v['step']} (`{v['options']}`) | {fmt(v['frames'])} | {fmt(v['out_size'])} | {fmt(v['fps'])} | {v.get('working') or '-'} | {fmt(v['process_wall_s'])} |")
L += [""]
if res["video_stages"]:
    L += ["Each stage alone (`bench/video_stages.py`, the same clip's size, 150 frames):", ""] + [f"    {l}" for l in res["video_stages"]] + [""]

L += ["## Where the train stage's time goes (`bench/train_phases.py`, default params, fresh MLflow store)", ""]
L += [f"    {l}" for l in res["train_phases"]] + [""]
if res["recipes"]:
    L += ["## Recipes tried (`bench/time_to_quality.py -S ...`: train, then Set5 / Set14 / BSD100)", ""]
    if os.environ.get("GPU_SH_RECIPES_BASE"):
        L += [f"On data prepared with `{os.environ['GPU_SH_RECIPES_BASE']}` (in `$WORK/recipes`).", ""]
    for n, lines in res["recipes"].items():
        L += [f"- {n}: `{steps[n]['command']}` exit {steps[n]['exit']}, {steps[n]['wall_s']:.0f} s wall", ""] + [f"    {l}" for l in lines] + [""]

L += ["## The training step (`bench/gpu_check.py`: captured vs eager, ms per step)", ""]
L += [f"    {l}" for l in res["gpu_check"]] + [""]

L += ["## Training throughput (`bench/train_throughput.py`)", "", "| loop | M LR px/s | steps/s (batch x patch²) |", "| --- | --- | --- |"]
for r in tp["rows"]:
    L.append(f"| {r['loop']} | {r['M_LR_px_per_s']:.2f} | {fmt(r['steps_per_s'], 0)} |")
L += [""] + [f"    {l}" for l in tp["lines"]] + [""]

L += [f"## Full-quality recipe (Makefile's {profile}, train.epochs={full_epochs}, by `dvc repro` in a copy)", ""]
if f.get("completed"):
    ft = f["train"]
    L += [f"- completed: train stage wall {fmt((steps.get('full_train') or {}).get('wall_s'))} s, training loop {fmt(ft.get('train_seconds'))} s for {ft.get('steps')} steps "
          f"({fmt(f.get('steady_steps_per_s'), 0)} steps/s after epoch 1); final test PSNR {fmt(ft.get('final_test_psnr'), 2)} dB", ""]
    L += bench_table(f.get("benchmark"), "ESPCN, full profile") + [""]
elif "full_train" in steps:
    L += [f"- **NOT completed within the budget** (exit {steps['full_train']['exit']}, {steps['full_train']['wall_s']:.0f} s given): stopped after "
          f"epoch {f.get('epochs_done', 0)}/{full_epochs} ({f.get('steps_done', 0)} steps), so no Set5/Set14/BSD100 scores for it.",
          f"- measured: epoch 1 (compile included) {fmt(f.get('first_epoch_s'))} s, then {fmt(f.get('steady_steps_per_s'), 0)} steps/s; "
          f"test PSNR at that point {fmt(f.get('last_test_psnr'), 2)} dB (cosine schedule far from its end)",
          f"- **extrapolated train time for {full_epochs} x {fspe} steps: {fmt(f.get('extrapolated_train_s'), 0)} s** "
          f"(from the default run's epochs: {fmt(d.get('full_profile_extrapolated_train_s'), 0)} s), plus about "
          f"{fmt((steps.get('dvc_repro_rest') or {}).get('wall_s'), 0)} s for evaluate + benchmark + register", ""]
else:
    L += ["- not run (no time left or the default run failed)", ""]
L += ["Logs: gpu.log (this script), gpu_logs.tar.gz (each command's output, metrics, params)."]
(out / "gpu_results.md").write_text("\n".join(L) + "\n")
print("\n".join(L))
EOF
}

# ---------------------------------------------------------------- setup
log "bench/gpu.sh: repo $REPO, work $WORK, out $OUT, python $PY, budget ${BUDGET}s, dry=$DRY"
for name in python python3; do printf '#!/bin/sh\nexec %s "$@"\n' "$PY" >"$WORK/bin/$name"; done
printf '#!/bin/sh\nexec %s -m dvc "$@"\n' "$PY" >"$WORK/bin/dvc"
printf '#!/bin/sh\nexec %s -m srctl.cli "$@"\n' "$PY" >"$WORK/bin/srctl"
chmod +x "$WORK/bin/"*
export PATH="$WORK/bin:$PATH"
if [ "$DRY" = 1 ]; then
  export PYTHONPATH="$WORK/repo/src${PYTHONPATH:+:$PYTHONPATH}"
  xz -t "$REPO/.whl/site-py312.tar.xz" && log "dry run: .whl/site-py312.tar.xz checked (xz -t), not unpacked: the project's environment is used"
else
  mkdir -p "$WORK/site"
  if ! unxz_tar "$REPO/.whl/site-py312.tar.xz" "$WORK/site"; then
    log "FATAL: cannot unpack .whl/site-py312.tar.xz (was .whl in carry? run bench/gpu_prepare.sh here first)"; exit 1
  fi
  # the image's protobuf / typing_extensions unless older than MLflow and pydantic need (then the carried ones)
  "$PY" - >"$LOGS/old_packages.txt" 2>&1 <<'EOF'
from importlib.metadata import PackageNotFoundError, version
from packaging.version import Version
old = []
for name, need in (("protobuf", "5.26.1"), ("typing_extensions", "4.14.1")):
    try:
        if Version(version(name)) < Version(need):
            old.append(f"{name} {version(name)}")
    except PackageNotFoundError:
        old.append(f"{name} missing")
print(", ".join(old))
EOF
  old=$(cat "$LOGS/old_packages.txt")
  fallback=$([ -n "$old" ] && echo "$WORK/site/_fallback:")
  export PYTHONPATH="$fallback$WORK/site:$WORK/repo/src${PYTHONPATH:+:$PYTHONPATH}"
  log "unpacked $(wc -l <"$REPO/.whl/site-py312.txt") packages into \$WORK/site${old:+; image has $old, too old: the carried protobuf and typing_extensions used}"
fi
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 GIT_PYTHON_REFRESH=quiet
export XDG_CACHE_HOME="$WORK/cache" DVC_SITE_CACHE_DIR="$WORK/dvc-site"
DATA=$WORK/shared/datasets
export SRCTL_DATA_MIRROR="$DATA/BSDS300"

# the checkout, less what does not belong in a fresh clone
mkdir -p "$WORK/repo"
tar -C "$REPO" --exclude=./.git --exclude=./.whl --exclude=./.gpu-data --exclude=./.gpu-build --exclude=./.venv \
  --exclude=./data/raw --exclude=./data/prepared --exclude=./models/espcn --exclude=./models/checkpoint.pt \
  --exclude=./mlflow.db --exclude=./mlartifacts --exclude=./mlruns --exclude=./.dvc/cache --exclude=./.dvc/tmp \
  --exclude=./.dvc/config.local --exclude=__pycache__ --exclude=./.pytest_cache --exclude=./.hypothesis -cf - . \
  | tar -C "$WORK/repo" -xf -
# the committed metrics are the CPU machine's: gone, so that only this run's can be read as results
rm -f "$WORK/repo/metrics/"*.json "$WORK/repo/metrics/train_log.csv" "$WORK/repo/models/"{mlflow_run,registered}.json
printf '[core]\n    no_scm = true\n' >"$WORK/repo/.dvc/config.local"  # the copy has no git history: DVC without git

# bytecode, as `pip install` leaves it on a user's machine: the image's packages come without .pyc
# files and the carried ones are unpacked without, so every process compiled ~4,400 modules from
# source (6.9 s in the profile of the 28 s train stage, first H200 run). Compiled once here, into a
# cache of our own.
export PYTHONPYCACHEPREFIX="$WORK/pycache"
unset PYTHONDONTWRITEBYTECODE
s=$(date +%s.%N)
# shellcheck disable=SC2046  # one argument per folder
"$PY" -m compileall -q -j 0 $("$PY" -c 'import sys; print(" ".join(p for p in sys.path if p.endswith("-packages")))') \
  $([ "$DRY" = 1 ] || echo "$WORK/site") "$WORK/repo/src" >"$LOGS/compileall.log" 2>&1
rc=$?  # 1 when some file does not compile (packages ship a few for other Pythons): harmless
log "bytecode compiled into \$WORK/pycache in $(awk -v a="$(date +%s.%N)" -v b="$s" 'BEGIN{printf "%.1f", a - b}') s (compileall exit $rc)"

# the data sets, where params.yaml's ../shared/datasets/... points from $WORK/repo
mkdir -p "$DATA"
if [ ! -d "$REPO/.gpu-data/BSDS300" ]; then log "FATAL: no .gpu-data/BSDS300 (was .gpu-data in carry? run bench/gpu_prepare.sh here first)"; exit 1; fi
cp -r "$REPO/.gpu-data/BSDS300" "$DATA/BSDS300"
unxz_tar "$REPO/.gpu-data/sets.tar.xz" "$DATA"
"$PY" - "$DATA" "$REPO/.gpu-data/BSD100.pixels.sha256" "$([ "$DRY" = 1 ] && echo 10 || echo 100)" >"$LOGS/bsd100.log" 2>&1 <<'EOF'
import hashlib, sys
from pathlib import Path
import numpy as np
from PIL import Image
data, sums, n = Path(sys.argv[1]), Path(sys.argv[2]).read_text().split("\n"), int(sys.argv[3])
(data / "BSD100").mkdir()
bad = []
for line in sums[:n]:
    digest, name, stem = line.split()
    with Image.open(data / f"BSDS300/images/test/{stem}.jpg") as im:
        crop = im.convert("RGB").crop((0, 0, im.width // 2 * 2, im.height // 2 * 2))
    if hashlib.sha256(np.asarray(crop).tobytes()).hexdigest() != digest:
        bad.append(name)
    crop.save(data / "BSD100" / name, compress_level=1)
print(f"BSD100: {n} images rebuilt from BSDS300, {n - len(bad)} pixel-identical to the original PNGs" + (f"; differ: {bad}" if bad else ""))
EOF
log "data: $(ls "$DATA/BSDS300/images/train" | wc -l)+$(ls "$DATA/BSDS300/images/test" | wc -l) BSDS300, $(ls "$DATA/Set5" | wc -l) Set5, $(ls "$DATA/Set14" | wc -l) Set14; $(cat "$LOGS/bsd100.log")"

# what this machine is
"$PY" - "$LOGS/env.json" >"$LOGS/env.log" 2>&1 <<'EOF'
import json, os, platform, subprocess, sys
info = {"python": platform.python_version(), "cpus": os.cpu_count()}
try:
    info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout.strip() or "none"
except (OSError, subprocess.TimeoutExpired):
    info["gpu"] = "none (no nvidia-smi)"
try:
    import torch
    info.update(torch=torch.__version__, cuda=torch.version.cuda, device="cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        info["torch_gpu"] = torch.cuda.get_device_name(0)
except Exception as exc:
    info.update(torch=f"MISSING ({type(exc).__name__}: {exc})", device="none")
for mod in ("mlflow", "dvc", "av", "sqlalchemy", "numpy", "PIL"):
    try:
        m = __import__(mod)
        info[mod] = getattr(m, "__version__", "?")
    except Exception as exc:
        info[mod] = f"MISSING ({type(exc).__name__}: {exc})"
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(json.dumps(info))
EOF
log "machine: $(cat "$LOGS/env.log")"
if [ "$DRY" != 1 ] && ! grep -q '"device": "cuda"' "$LOGS/env.json" 2>/dev/null; then
  log "FATAL: torch sees no GPU here; stopping (the CPU would blow the budget)"; summarize >/dev/null 2>&1; exit 1
fi
# the CPUs' use over the whole run, every second: says whether a step (4K encoding, say) saturates them
(while :; do printf '%s %s\n' "$(date +%s.%N)" "$(head -n 1 /proc/stat)"; sleep 1; done) >"$LOGS/cpu_stat.log" 2>&1 &
CPU_PID=$!
if [ "$DRY" != 1 ]; then  # GPU use over the whole run, every 2 s
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw,clocks.sm --format=csv -l 2 >"$LOGS/nvidia_smi.csv" 2>&1 &
  SMI_PID=$!
fi

if [ "$DRY" = 1 ]; then  # shrink the default run (in the copy's params.yaml only)
  setp "$WORK/repo/params.yaml" prepare.max_train_images=8 prepare.max_test_images=4 train.epochs=2 \
    train.steps_per_epoch=10 evaluate.max_images=4 evaluate.samples=1
  DEV=cpu; CLIP=(--size 320x180 --frames 10); STAGES_CLIP=160x96; FAST=(-- --preset ultrafast --batch 4); TP=(--device cpu --seconds 1 --workers 1)
else
  DEV=cuda; CLIP=(--size 1280x720 --frames 300); STAGES_CLIP=1280x720; FAST=(-- --preset ultrafast --batch 16); TP=(--device cuda --seconds "$TP_SECONDS")
fi
CLIP+=(--repeat "${GPU_SH_VIDEO_REPEAT:-1}")
log "setup done"

# ---------------------------------------------------------------- 1. the default pipeline
R=$WORK/repo
step dvc_repro_prepare "$(cap 120)" "$R" dvc repro prepare
# the captured training step against the same step run eagerly, and ms/step of each shape
GC=$([ "$DRY" = 1 ] && echo "--device cpu --steps 5" || echo "--steps 1000")
step gpu_check "$(cap 90)" "$R" python bench/gpu_check.py $GC && grep '^\[' "$LOGS/gpu_check.log" | sed 's/^/      /' | tee -a "$LOG"
# where the stage's time goes, phase by phase (its own MLflow store, so the stage's stays fresh)
PH=$([ "$DRY" = 1 ] && echo "--profile 15" || echo "${GPU_SH_PHASES_PROFILE:-}")  # cProfile slows the imports
step train_phases "$(cap 90)" "$R" python bench/train_phases.py $PH
step dvc_repro_train "$(cap 300)" "$R" dvc repro train && TRAINED=1 || TRAINED=0
step dvc_repro_rest "$(cap 150)" "$R" dvc repro
[ -f "$R/metrics/benchmark.json" ] && log "$(grep -A3 '^| x' "$LOGS/dvc_repro_rest.log" | head -4 | tr '\n' ' ')"

# ---------------------------------------------------------------- 2. srctl video
if [ -f "$R/models/mlflow_run.json" ] && [ "$TRAINED" = 1 ]; then
  step video_default "$(cap 100)" "$R" python bench/video_speed.py "${CLIP[@]}" && log "$(grep -h 'frames/s\|process wall' "$LOGS/video_default.log" | tr '\n' ' ')"
  step video_fast "$(cap 100)" "$R" python bench/video_speed.py "${CLIP[@]}" "${FAST[@]}" && log "$(grep -h 'frames/s\|process wall' "$LOGS/video_fast.log" | tr '\n' ' ')"
  # the default preset with three encoders on 2-second segments at once (one x264 veryfast is slower
  # than the GPU at 4K)
  step video_split "$(cap 100)" "$R" python bench/video_speed.py "${CLIP[@]}" -- --encoders 3 && log "$(grep -h 'frames/s\|process wall' "$LOGS/video_split.log" | tr '\n' ' ')"
  IFS=';' read -ra VIDEO_OPTIONS <<<"${GPU_SH_VIDEO_OPTIONS:-}"
  for i in "${!VIDEO_OPTIONS[@]}"; do
    # shellcheck disable=SC2086  # one word per option
    step "video_options$((i + 1))" "$(cap 100)" "$R" python bench/video_speed.py "${CLIP[@]}" -- ${VIDEO_OPTIONS[$i]} && log "$(grep -h 'frames/s\|process wall' "$LOGS/video_options$((i + 1)).log" | tr '\n' ' ')"
  done
  # each stage alone: decode, the GPU's part, libx264 per preset with slice and with frame threads
  step video_stages "$(cap 60)" "$R" python bench/video_stages.py "${STAGES_CLIP}" models/espcn && grep 'frames/s' "$LOGS/video_stages.log" | sed 's/^/      /' | tee -a "$LOG"
else
  log "SKIP  video: the default run left no model"
fi

# ---------------------------------------------------------------- 3. training throughput
if [ -d "$R/data/prepared" ]; then
  step train_throughput "$(cap 150)" "$R" python bench/train_throughput.py "${TP[@]}" && grep 'px/s' "$LOGS/train_throughput.log" | sed 's/^/      /' | tee -a "$LOG"
fi

# ---------------------------------------------------------------- 4a. recipes to try, if any
# GPU_SH_RECIPES="train.batch_size=64 train.lr=0.003;train.batch_size=128 ..." (one set per ';')
if [ -n "${GPU_SH_RECIPES:-}" ] && [ -d "$R/data/prepared" ]; then
  RR=$R
  if [ -n "${GPU_SH_RECIPES_BASE:-}" ]; then  # time_to_quality.py reads its repo's params.yaml and data
    RR=$WORK/recipes
    copy_run "$RR"
    # shellcheck disable=SC2086  # one word per override
    setp "$RR/params.yaml" $GPU_SH_RECIPES_BASE
    step prepare_recipes "$(cap 120)" "$RR" dvc repro prepare || RR=""
  fi
  IFS=';' read -ra RECIPES <<<"$GPU_SH_RECIPES"
  for i in "${!RECIPES[@]}"; do
    [ -n "$RR" ] || break
    # shellcheck disable=SC2046  # one -S per override
    step "recipe$((i + 1))" "$(cap "${GPU_SH_RECIPE_TIMEOUT:-120}")" "$RR" python bench/time_to_quality.py $(printf -- '-S %s ' ${RECIPES[$i]})
  done
fi

# ---------------------------------------------------------------- 4. the full profile, with the time left
if [ -d "$R/data/prepared" ] && [ "$TRAINED" = 1 ]; then
  F=$WORK/full
  copy_run "$F"
  # shellcheck disable=SC2086  # one word per override
  setp "$F/params.yaml" $FULL_PROFILE train.epochs="$FULL_EPOCHS"
  [ "$DRY" = 1 ] && setp "$F/params.yaml" train.steps_per_epoch=10  # the dry run's size again
  EVAL_RESERVE=$([ "$DRY" = 1 ] && echo 60 || echo 45)  # for evaluate + benchmark + register if training ends in time
  left=$(( $(remaining) - RESERVE - EVAL_RESERVE ))
  [ -n "${GPU_SH_FULL_TIMEOUT:-}" ] && (( GPU_SH_FULL_TIMEOUT < left )) && left=$GPU_SH_FULL_TIMEOUT
  log "full profile: ${left}s for $FULL_EPOCHS epochs of $(grep -m1 steps_per_epoch "$F/params.yaml" | awk '{print $2}') steps"
  if step full_train "$left" "$F" dvc repro train; then
    step full_rest "$(cap 150)" "$F" dvc repro
  fi
  if [ -f "$F/models/checkpoint.pt" ]; then  # stopped: what it had done, from its checkpoint
    "$PY" - "$F/models/checkpoint.pt" "$LOGS/full_checkpoint.json" >>"$LOGS/full_train.log" 2>&1 <<'EOF'
import json, sys, torch
ck = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
json.dump({"epoch": ck["epoch"], "seconds": ck["seconds"], "run_id": ck["run_id"], "history": ck["history"]}, open(sys.argv[2], "w"), indent=1)
print(f"checkpoint: epoch {ck['epoch']}, {ck['seconds']:.1f} s")
EOF
  fi
else
  log "SKIP  full profile: the default run did not train"
fi

# ---------------------------------------------------------------- results
[ -n "${SMI_PID:-}" ] && kill "$SMI_PID" 2>/dev/null
kill "$CPU_PID" 2>/dev/null
for d in repo full; do
  [ -d "$WORK/$d" ] || continue
  mkdir -p "$LOGS/$d"
  cp -r "$WORK/$d/params.yaml" "$WORK/$d/dvc.lock" "$WORK/$d/metrics" "$LOGS/$d/" 2>/dev/null
  cp "$WORK/$d/models/"*.json "$LOGS/$d/" 2>/dev/null
done
summarize >"$LOGS/summary.log" 2>&1 || { log "summary failed:"; tail -n 20 "$LOGS/summary.log" | tee -a "$LOG"; }
tar -C "$WORK" -czf "$OUT/gpu_logs.tar.gz" logs
log "done: $OUT/gpu_results.md, gpu_results.json, gpu.log, gpu_logs.tar.gz"
cat "$OUT/gpu_results.md"
