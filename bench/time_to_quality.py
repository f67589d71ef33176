"""Time to quality: train a recipe (params.yaml plus overrides) and print test PSNR against seconds.

Runs the train stage's own code (`srctl.train.train`) on data/prepared, with its MLflow run in a
throw-away store, then scores the model on Set5 / Set14 / BSD100 as the benchmark stage does.
Prints one line per epoch (seconds, BSDS300 test PSNR) and a Markdown row for the README, with the
CPU's name and what it computes natively, so that every figure says where it came from.

To see what a CPU with AVX2 only does on a bigger one (an approximation; name it as such):
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python bench/time_to_quality.py \
        -S train.precision=fp32
Usage (from the repo root, after `make repro`):
    python bench/time_to_quality.py [-S train.epochs=10 -S train.batch_size=20 ...] [--label NAME]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMITED = os.environ.get("ATEN_CPU_CAPABILITY") or os.environ.get("ONEDNN_MAX_CPU_ISA")
if LIMITED:  # Inductor's cache keys miss the ISA: kernels built for the other one broke runs here
    os.environ.setdefault(
        "TORCHINDUCTOR_CACHE_DIR", f"{tempfile.gettempdir()}/torchinductor-{LIMITED.lower()}"
    )


def cpu() -> str:
    """The CPU's model name and the instructions that decide training precision and speed."""
    name = platform.processor() or "cpu"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln)
        flags = next(ln for ln in out.splitlines() if ln.startswith("Flags")).split()
        native = [f for f in ("amx_tile", "avx512_bf16", "avx512f", "avx2") if f in flags]
    except (OSError, subprocess.CalledProcessError, StopIteration):
        native = []
    import torch

    used = torch.backends.cpu.get_cpu_capability()
    return f"{name} ({'+'.join(native) or '?'}; torch uses {used}{', limited' if LIMITED else ''})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="key=value")
    ap.add_argument("--label", default=None)
    args = ap.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="srctl-ttq-")  # removed when main returns
    work = Path(scratch.name)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"

    from set_params import set_params  # bench/, beside this script

    from srctl import model as M
    from srctl import params as P
    from srctl.benchmark import benchmark, set_folders
    from srctl.train import train

    params = P.load(set_params(ROOT / "params.yaml", work / "params.yaml", args.overrides))
    started = time.perf_counter()
    summary = train(
        params, ROOT / "data" / "prepared", work / "model", work / "metrics", work / "run.json"
    )
    wall = time.perf_counter() - started
    with (work / "metrics" / "train_log.csv").open() as f:
        for row in csv.DictReader(f):
            secs, psnr = float(row["seconds"]), float(row["test_psnr"])
            print(f"  {secs:7.1f} s  epoch {row['epoch']:>3}  {psnr:.2f} dB")
    scores = benchmark(M.load(work / "model"), set_folders(params, ROOT))
    cells = " | ".join(f"{name} {r['psnr']:.2f}" if r else "absent" for name, r in scores.items())
    label = args.label or (" ".join(args.overrides) or "params.yaml")
    if summary["device"] == "cuda":
        import torch

        where = torch.cuda.get_device_name(0)
    else:
        where = cpu()
    print(
        f"| {label} | {where} | {summary['precision']} | {summary['steps']} | "
        f"{summary['train_seconds']:.0f} s ({wall:.0f} s wall) | {cells} |"
    )


if __name__ == "__main__":
    main()
