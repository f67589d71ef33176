"""End-to-end speed of `srctl video`: makes a clip (a panning BSDS300 photo with a 440 Hz AAC
track), upscales it with the given srctl options, prints frames/s as srctl reports it and the
process wall time. With --against REF, the srctl of git commit REF runs the same clip in the same
run, the two taking turns (--repeat times each; the best of each is compared).

Usage: python bench/video_speed.py [--size 1280x720] [--frames 300] [--run-id ID]
                                  [--against REF] [--repeat N] [-- srctl video options]
e.g.   python bench/video_speed.py --size 640x360 --frames 60 --against HEAD~1 --repeat 3
       python bench/video_speed.py --size 1280x720 --frames 300 -- --preset ultrafast --batch 16
         (GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT.parent / "shared" / "datasets" / "BSDS300" / "images" / "test" / "3096.jpg"


def make_clip(path: Path, w: int, h: int, frames: int, rate: int = 30) -> None:
    photo = Image.open(PHOTO).convert("RGB").resize((w + 2 * frames, h + frames), Image.BICUBIC)
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=rate)
        v.width, v.height, v.pix_fmt, v.options = (
            w,
            h,
            "yuv420p",
            {"crf": "20", "preset": "veryfast"},
        )
        a = out.add_stream("aac", rate=48000)
        for i in range(frames):
            out.mux(v.encode(av.VideoFrame.from_image(photo.crop((2 * i, i, 2 * i + w, i + h)))))
        out.mux(v.encode(None))
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(48000 * frames // rate) / 48000)).astype(
            np.float32
        )[None]
        for k in range(0, tone.shape[1], 1024):
            f = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(tone[:, k : k + 1024]), format="fltp", layout="mono"
            )
            f.sample_rate = 48000
            out.mux(a.encode(f))
        out.mux(a.encode(None))


def split_dashes(argv: list[str]) -> tuple[list[str], list[str]]:
    """(this script's arguments, the srctl options after --)."""
    if "--" not in argv:
        return argv, []
    return argv[: argv.index("--")], argv[argv.index("--") + 1 :]


def package_at(ref: str, folder: Path) -> Path:
    """The src/ folder of srctl as committed at `ref`, extracted under `folder`."""
    tar = subprocess.run(
        ["git", "archive", ref, "src/srctl"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=tar, check=True)
    return folder / "src"


def main() -> None:
    argv, extra = split_dashes(sys.argv[1:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--run-id", default=None)
    ap.add_argument("--against", default=None, help="a git commit whose srctl runs too")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each, the best one counts")
    args = ap.parse_args(argv)
    w, h = map(int, args.size.split("x"))
    run_id = args.run_id or json.loads((ROOT / "models" / "mlflow_run.json").read_text())["run_id"]
    scratch = tempfile.TemporaryDirectory(prefix="srctl-video-")  # removed when main returns
    work = Path(scratch.name)
    clip = work / "clip.mp4"
    make_clip(clip, w, h, args.frames)
    versions = {"this checkout": ROOT / "src"}
    if args.against:  # the package as committed at REF, beside this one
        old = work / "against"
        old.mkdir()
        versions = {args.against: package_at(args.against, old), **versions}
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.repeat):
        for label, src in versions.items():
            fps, wall = run(clip, work / "out.mp4", run_id, extra, src)
            print(f"  {label}: {fps:.2f} frames/s (process wall {wall:.1f} s)")
            if label not in best or fps > best[label][0]:
                best[label] = (fps, wall)
    for label, (fps, wall) in best.items():
        print(
            f"{args.frames} frames {w}x{h} -> x3, options {extra or 'default'}, {label}: "
            f"{fps:.2f} frames/s, process wall {wall:.1f} s (best of {args.repeat})"
        )
    if len(best) == 2:
        (a, (fa, _)), (b, (fb, _)) = best.items()
        print(f"{b} vs {a}: {fb / fa:.2f}x the frames/s")


def run(clip: Path, out: Path, run_id: str, extra: list[str], src: Path) -> tuple[float, float]:
    """One `srctl video` process on `clip` with the package in `src`: (frames/s, wall seconds)."""
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "srctl.cli", "video", str(clip), "-o", str(out), "-q", "--force"]
    start = time.perf_counter()
    res = subprocess.run(
        [*cmd, "--run-id", run_id, *extra], capture_output=True, text=True, cwd=ROOT, env=env
    )
    wall = time.perf_counter() - start
    print(res.stdout.strip() or res.stderr.strip())
    if res.returncode:
        sys.exit(f"srctl video failed ({res.returncode})")
    return float(re.search(r"([0-9.]+) frames/s", res.stdout).group(1)), wall


if __name__ == "__main__":
    main()
