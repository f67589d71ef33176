"""Latency of `srctl video` on a live stream, as a video call or a game sees it: frames are sent
in real time (at --rate, H.264 in MPEG-TS, as SRT or UDP carry them) into `srctl video - -o -`,
and each upscaled frame's time of arrival on its standard output (Matroska, as a player reads
it) is taken. Prints, per srctl: the start-up (first frame sent -> first frame out: imports,
the model, the backlog of frames sent meanwhile), then the latency (sent -> out: median, 90th
percentile, worst) of the frames of the second half, once that backlog is worked off, and
whether srctl kept up (the last 2 seconds' median no worse than the second half's), and how
many frames came out (`-- --realtime` drops those that wait). The
defaults are a size and rate that a 2-core CPU upscales in real time. With --against REF, the
srctl of git commit REF runs the same stream in the same run, the two taking turns (--repeat
times each; the run with the lowest median counts).

Usage: python bench/stream_latency.py [--size 256x144] [--rate 10] [--seconds 40]
                                      [--model-dir models/espcn] [--against REF] [--repeat N]
                                      [-- srctl video options]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image
from video_speed import PHOTO, ROOT, package_at, split_dashes


def send(stdin, frames: list[Image.Image], rate: int, sent: list[float]) -> None:
    """Encode `frames` as a live H.264 stream (zerolatency) in MPEG-TS into `stdin`, frame i at
    start + i / rate; `sent` gets the time each frame's bytes were written."""
    out = av.open(stdin, "w", format="mpegts", container_options={"flush_packets": "1"})
    v = out.add_stream("libx264", rate=rate)
    v.width, v.height, v.pix_fmt = *frames[0].size, "yuv420p"
    v.options = {"preset": "ultrafast", "tune": "zerolatency"}
    start = time.perf_counter()
    try:
        for i, frame in enumerate(frames):
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
            out.mux(v.encode(av.VideoFrame.from_image(frame)))
            stdin.flush()
            sent.append(time.perf_counter())
        out.mux(v.encode(None))
        out.close()
    finally:
        stdin.close()


def receive(stdout, arrived: list[tuple[float, float]]) -> None:
    """Read Matroska from `stdout`; `arrived` gets (pts in seconds, time read) of each video
    packet."""
    with av.open(stdout, "r", format="matroska", buffer_size=4096) as inp:
        v = inp.streams.video[0]
        for packet in inp.demux(v):
            if packet.pts is not None:
                arrived.append((float(packet.pts * v.time_base), time.perf_counter()))


def run(frames, rate: int, model: Path, extra: list[str], src: Path) -> dict:
    """One `srctl video - -o -` process fed `frames` live, with the package in `src`."""
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "srctl.cli", "video", "-", "-o", "-", "-q"]
    proc = subprocess.Popen(
        [*cmd, "--model-dir", str(model), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # read what has come, not a full buffer
        env=env,
        cwd=ROOT,
    )
    sent: list[float] = []
    arrived: list[tuple[float, float]] = []
    threads = [
        threading.Thread(target=send, args=(proc.stdin, frames, rate, sent)),
        threading.Thread(target=receive, args=(proc.stdout, arrived)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    err = proc.stderr.read().decode()
    if proc.wait() or not arrived:
        sys.exit(f"srctl video failed ({proc.returncode}): {err}")
    # frame i is shown at the first one's time + i / rate (--realtime drops some: not all come)
    first = min(pts for pts, _ in arrived)
    late = np.array([t - sent[round((pts - first) * rate)] for pts, t in sorted(arrived)])
    steady = late[len(late) // 2 :]
    return {
        "kept": len(arrived),
        "startup": late[0],
        "median": float(np.median(steady)),
        "p90": float(np.percentile(steady, 90)),
        "worst": float(steady.max()),
        "kept_up": float(np.median(late[-2 * rate :])) <= float(np.median(steady)) + 0.1,
    }


def main() -> None:
    argv, extra = split_dashes(sys.argv[1:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="256x144")
    ap.add_argument("--rate", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=40)
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models" / "espcn")
    ap.add_argument("--against", default=None, help="a git commit whose srctl runs too")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each, the best one counts")
    args = ap.parse_args(argv)
    w, h = map(int, args.size.split("x"))
    n = args.rate * args.seconds
    photo = Image.open(PHOTO).convert("RGB").resize((w + n, h + n // 2), Image.BICUBIC)
    frames = [photo.crop((i, i // 2, i + w, i // 2 + h)) for i in range(n)]  # a slow pan
    scratch = tempfile.TemporaryDirectory(prefix="srctl-latency-")  # removed when main returns
    versions = {"this checkout": ROOT / "src"}
    if args.against:  # the package as committed at REF, beside this one
        versions = {args.against: package_at(args.against, Path(scratch.name)), **versions}
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for label, src in versions.items():
            r = run(frames, args.rate, args.model_dir, extra, src)
            print(
                f"  {label}: start-up {r['startup']:.2f} s; latency median {r['median']:.3f} s, "
                f"p90 {r['p90']:.3f} s, worst {r['worst']:.3f} s; kept up: {r['kept_up']}; "
                f"{r['kept']} of {n} frames out"
            )
            if label not in best or r["median"] < best[label]["median"]:
                best[label] = r
    for label, r in best.items():
        print(
            f"{n} frames {w}x{h} at {args.rate} frames/s -> x3, options {extra or 'default'}, "
            f"{label}: start-up {r['startup']:.2f} s, latency median {r['median']:.3f} s, "
            f"p90 {r['p90']:.3f} s, worst {r['worst']:.3f} s, kept up: {r['kept_up']}, "
            f"{r['kept']} of {n} frames out (best of {args.repeat})"
        )
    if len(best) == 2:
        (a, ra), (b, rb) = best.items()
        print(f"{b} vs {a}: {rb['median'] / ra['median']:.2f}x the median latency")


if __name__ == "__main__":
    main()
