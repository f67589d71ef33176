"""Inference speed of `srctl infer` against a naive PyTorch loop of the same network, in one run.

Prints, for this machine:
  1. 100 BSDS300 test images downscaled x3: one `srctl infer` call vs the naive script, whole
     processes (start-up included);
  2. one 1280x720 frame to 3840x2160: the same two, whole processes;
  3. model throughput on 640x360 inputs (frames/s): srctl's PyTorch path (fp32 and bf16) and its
     onnxruntime path (fp32) vs the naive NCHW fp32 forward;
  4. with --big: a 12000x8000 photo through `srctl infer` (tiled): time and peak memory;
  5. with --engines: one picture of each size from 481x321 to 4000x3000, `srctl infer --fp32`
     (onnxruntime) against `srctl infer --bf16` (PyTorch), whole processes: which engine suits
     this CPU by default (runtime.suits).

Usage (from the repo root, after `make repro`):
    python bench/infer_speed.py [--run-id ID] [--precision fp32|bf16] [--big] [--engines]
--precision is passed to `srctl infer` (default: the machine's own choice, as a user gets it:
bf16 on PyTorch where the CPU has AMX, else fp32 on onnxruntime).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BSDS = ROOT.parent / "shared" / "datasets" / "BSDS300"
SRCTL = [sys.executable, "-m", "srctl.cli"]


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def best_of(n: int, make_cmd) -> float:
    return min(wall(make_cmd(i)) for i in range(n))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-id", default=None, help="default: models/mlflow_run.json")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--engines", action="store_true")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default=None)
    args = ap.parse_args()

    import torch
    from PIL import Image

    from srctl import model as M
    from srctl import params as P
    from srctl import registry, runtime
    from srctl.degrade import crop_to_multiple, downscale
    from srctl.upscale import upscale_batch

    run_id = args.run_id or registry.read_run(P.Paths(ROOT).run_file)["run_id"]
    # cached: both sides start from local files
    model_dir = registry.fetch_model(f"runs:/{run_id}/model")
    work = Path(tempfile.mkdtemp(prefix="srctl-bench-"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; run {run_id}")
    chosen = runtime.suits(None, args.precision, None)
    print(f"srctl infer runs on {'onnxruntime (fp32)' if chosen else 'PyTorch'} here")
    infer = [*SRCTL, "infer", *([f"--{args.precision}"] if args.precision else [])]

    # 1. 100 small images
    lr = work / "lr"
    lr.mkdir()
    for p in sorted((BSDS / "images" / "test").glob("*.jpg")):
        downscale(crop_to_multiple(Image.open(p).convert("RGB"), 3), 3).save(lr / f"{p.stem}.png")
    files = sorted(str(p) for p in lr.iterdir())
    ours = best_of(
        args.repeat,
        lambda i: [*infer, "--run-id", run_id, str(lr), "-o", str(work / f"s{i}"), "-q"],
    )
    naive = best_of(
        args.repeat,
        lambda i: [
            sys.executable,
            "bench/naive_infer.py",
            str(model_dir),
            str(work / f"n{i}"),
            *files,
        ],
    )
    print(
        f"[1] {len(files)} images x3 ({'x'.join(map(str, Image.open(files[0]).size))} and turned): "
        f"srctl infer {ours:.2f} s, naive loop {naive:.2f} s, ratio {ours / naive:.2f} "
        "(target <= 15 s and <= 1.0)"
    )

    # 2. one 720p frame to 4K
    frame = work / "frame720.png"
    Image.open(BSDS / "images" / "test" / "3096.jpg").convert("RGB").resize(
        (1280, 720), Image.BICUBIC
    ).save(frame)
    ours = best_of(
        args.repeat,
        lambda i: [
            *infer,
            "--run-id",
            run_id,
            str(frame),
            "-o",
            str(work / f"f{i}.png"),
            "-q",
        ],
    )
    naive = best_of(
        args.repeat,
        lambda i: [
            sys.executable,
            "bench/naive_infer.py",
            str(model_dir),
            str(work / f"fn{i}"),
            str(frame),
        ],
    )
    print(
        f"[2] 1280x720 -> 3840x2160: srctl infer {ours:.2f} s, naive loop {naive:.2f} s, "
        f"ratio {ours / naive:.2f} (target <= 0.8)"
    )

    # 3. model throughput at 640x360
    net = M.load(model_dir)
    x = torch.randint(0, 256, (1, 3, 360, 640), dtype=torch.uint8)
    y = torch.rand(1, 1, 360, 640)

    def fps(fn, n=10) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return n / (time.perf_counter() - start)

    with torch.inference_mode():
        naive_fps = fps(lambda: net(y))
    fp32 = fps(lambda: upscale_batch(net, x, tile=1024))
    bf16 = fps(lambda: upscale_batch(net, x, tile=1024, amp=torch.bfloat16))
    onnx = runtime.OnnxEngine(model_dir, tile=1024)
    ort = fps(lambda: onnx(x.numpy()))
    print(
        f"[3] 640x360 frames/s: srctl PyTorch fp32 {fp32:.1f}, PyTorch bf16 {bf16:.1f}, "
        f"onnxruntime fp32 {ort:.1f}; naive NCHW fp32 forward {naive_fps:.1f} (target >= 6)"
    )

    # 4. a 12000x8000 photo
    if args.big:
        big = work / "big.jpg"
        Image.open(BSDS / "images" / "test" / "3096.jpg").convert("RGB").resize(
            (12000, 8000), Image.BICUBIC
        ).save(big, quality=92)
        start = time.perf_counter()
        subprocess.run(
            [
                *infer,
                "--run-id",
                run_id,
                str(big),
                "-o",
                str(work / "big_x3.png"),
                "-q",
            ],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        print(
            f"[4] 12000x8000 -> 36000x24000: {seconds:.0f} s, "
            f"peak memory of the largest child {peak:.1f} GiB"
        )

    # 5. onnxruntime fp32 against PyTorch bf16, by picture size
    if args.engines:
        photo = Image.open(BSDS / "images" / "test" / "3096.jpg").convert("RGB")
        for w, h in ((481, 321), (1280, 720), (2000, 1500), (4000, 3000)):
            pic = work / f"{w}.png"
            photo.resize((w, h), Image.BICUBIC).save(pic)
            cells = []
            for engine, flag in (("onnxruntime fp32", "--fp32"), ("PyTorch bf16", "--bf16")):
                cmd = [*SRCTL, "infer", flag, "--run-id", run_id, str(pic), "-q", "--force"]
                cells.append(f"{engine} {best_of(args.repeat, lambda i, cmd=cmd: cmd):.2f} s")
            print(f"[5] {w}x{h} -> x3: {', '.join(cells)}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
