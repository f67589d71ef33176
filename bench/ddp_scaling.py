"""How the train stage's time scales from 1 to N DDP processes on this machine, in one run.

Runs the real stage (`python -m srctl.train`, as `dvc repro` does) in a scratch project that links
this repo's data/prepared, with params.yaml's recipe shortened to --epochs x --steps, once per
process count (`train.processes`), each into its own scratch sqlite MLflow store. The global batch
is the same in every run (DDP splits it), so each run does the same work; prints train seconds, wall
seconds, the speed-up over 1 process and the final test PSNR. A last row runs 1 process on 1 thread:
on a CPU, N processes each get cores/N threads, so that row shows what DDP itself adds over torch's
own threading.

Usage (from the repo root, after `make repro`):
  python bench/ddp_scaling.py [--processes 1 2] [--epochs 3] [--steps 500] [--compile never]"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run(
    processes: int, epochs: int, steps: int, compile: str, scratch: Path, threads: int | None = None
) -> dict:
    project = scratch / f"p{processes}-{threads}"
    (project / "data").mkdir(parents=True)
    (project / "data" / "prepared").symlink_to(ROOT / "data" / "prepared")
    (project / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(
        epochs=epochs, steps_per_epoch=steps, processes=processes, compile=compile, resume=False
    )
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow.db",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
    }
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "srctl.train"],
        cwd=project,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    summary = json.loads((project / "metrics" / "train.json").read_text())
    label = f"{processes}" + (f" ({threads} thread)" if threads else "")
    return {
        "processes": label,
        "wall": wall,
        "train": summary["train_seconds"],
        "psnr": summary["final_test_psnr"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=500, help="steps per epoch")
    ap.add_argument("--compile", choices=["auto", "never"], default="never")
    args = ap.parse_args()
    if not (ROOT / "data" / "prepared" / "train.safetensors").is_file():
        sys.exit("error: no data/prepared: run `make repro` (or `dvc repro prepare`) first")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    print(
        f"{os.cpu_count()} CPUs; batch {params['batch_size']} (split over the processes), "
        f"patch {params['patch_size']}, "
        f"{args.epochs} x {args.steps} steps, compile {args.compile}"
    )
    with tempfile.TemporaryDirectory(prefix="srctl-ddp-") as scratch:
        results = [
            run(n, args.epochs, args.steps, args.compile, Path(scratch)) for n in args.processes
        ]
        results.append(run(1, args.epochs, args.steps, args.compile, Path(scratch), threads=1))
    base = results[0]["train"]
    print(f"{'processes':>14} {'train s':>8} {'wall s':>7} {'speed-up':>8} {'test PSNR':>9}")
    for r in results:
        print(
            f"{r['processes']:>14} {r['train']:>8.1f} {r['wall']:>7.1f} "
            f"{base / r['train']:>7.2f}x {r['psnr']:>9.2f}"
        )


if __name__ == "__main__":
    main()
