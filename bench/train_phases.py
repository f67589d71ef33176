"""Where the train stage's wall time goes, phase by phase (issue 14: its fixed costs on a GPU).

Runs the stage's own code (`srctl.train.train`, params.yaml plus -S overrides) in this process, on
data/prepared, with its MLflow run in a throw-away store (as a fresh clone's first `dvc repro`
has), and prints seconds since the interpreter started at each phase: imports, the device ready,
data on the device, the network built, the MLflow run started, the step captured (on a GPU),
each epoch, the model logged. The device is synchronised at each mark, so GPU work is counted
where it happens. With --profile N, also cProfile's N costliest calls (cumulative).

Usage (from the repo root, after `dvc repro prepare`):
    python bench/train_phases.py [-S train.epochs=2 ...] [--profile 30]
"""

from __future__ import annotations

import time

T0 = time.perf_counter()
MARKS: list[tuple[float, str]] = []


def mark(what: str) -> None:
    import sys
    import threading

    torch = sys.modules.get("torch")
    # the main thread's GPU work only: a sync from the MLflow thread broke a graph being captured
    main = threading.current_thread() is threading.main_thread()
    if main and torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    MARKS.append((time.perf_counter() - T0, what))
    print(f"[{MARKS[-1][0]:7.2f} s] {what}", flush=True)


import argparse  # noqa: E402
import cProfile  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed(owner, name: str, label: str, once: bool = False) -> None:
    """Wrap `owner.name` so that its end is marked (only its first call's if `once`)."""
    fn, seen = getattr(owner, name), []

    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        if not (once and seen):
            mark(label)
        seen.append(1)
        return out

    setattr(owner, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="key=value")
    ap.add_argument("--profile", type=int, default=0, help="print cProfile's N costliest calls")
    args = ap.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="srctl-phases-")  # removed when main returns
    work = Path(scratch.name)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    mark("interpreter up")
    import torch

    mark("torch imported")
    from set_params import set_params  # bench/, beside this script

    from srctl import params as P
    from srctl import registry, steps
    from srctl import train as T

    mark("srctl imported (MLflow is imported on first use)")
    torch.zeros(1, device=T.pick_device())
    mark(f"device ready ({T.pick_device()})")

    timed(T, "_load_data", "data on the device")
    timed(T, "_build", "network, optimiser built")
    timed(registry, "_mlflow", "mlflow imported (in its own thread)", once=True)
    timed(registry, "_log_dataset", "MLflow run started, params and dataset logged (same)")
    timed(steps.GraphStep, "_capture", "CUDA graph captured (warm-up steps included)")
    timed(T, "test_psnr", "test PSNR")
    timed(T, "_save_checkpoint", "checkpoint saved")
    timed(registry, "log_model", "model logged to MLflow")
    params = P.load(set_params(ROOT / "params.yaml", work / "params.yaml", args.overrides))
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    T.train(params, ROOT / "data" / "prepared", work / "model", work / "metrics", work / "run.json")
    if prof:
        prof.disable()
    mark("train() returned")
    print("\nphase                                              seconds")
    last = 0.0
    for t, what in MARKS:
        print(f"  {what:<48} {t - last:7.2f}")
        last = t
    print(f"  {'total':<48} {last:7.2f}")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(args.profile)


if __name__ == "__main__":
    main()
