"""Where `srctl video` spends its time: each stage alone, frames/s.

Decode (+ to RGB), network + colour + yuv420p + copy back (per batch size), RGB -> yuv420p alone
(PyTorch's, which a GPU runs, and swscale's, which a CPU leaves it to), and libx264 alone per
preset, with slice threads (PyAV's default) and frame threads (srctl's), on the same clip. Run
where the video is slow to see which stage bounds it.

Usage: python bench/video_stages.py CLIP MODEL_DIR   (MODEL_DIR: a folder with config.json, e.g. the
       run's cache ~/.cache/srctl/runs/<run id>, or models/espcn; CLIP: a video, or WxH for
       video_speed.py's clip of that size, 150 frames)
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from srctl import model as M
from srctl.color import rgb_to_yuv420p
from srctl.device import autocast_dtype, pick_device
from srctl.upscale import upscale_batch
from srctl.video import _colours, _ToRGB


def main() -> None:
    clip, model_dir = sys.argv[1], Path(sys.argv[2])
    if size := re.fullmatch(r"(\d+)x(\d+)", clip):
        from video_speed import make_clip  # bench/, beside this script

        scratch = tempfile.TemporaryDirectory(prefix="srctl-stages-")  # removed when main returns
        clip = str(Path(scratch.name) / "clip.mp4")
        make_clip(Path(clip), int(size[1]), int(size[2]), 150)
    device = pick_device()
    net = M.load(model_dir, device)
    amp = autocast_dtype(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    start, frames, rgb = time.perf_counter(), [], None
    for f in av.open(clip).decode(video=0):
        rgb = rgb or _ToRGB(_colours(f)[0], (f.width, f.height))  # as srctl video decodes
        frames.append(rgb(f))
    print(
        f"decode + to RGB: {len(frames) / (time.perf_counter() - start):.1f} frames/s "
        f"({len(frames)} frames)"
    )

    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    upscale_batch(net, x[:2].to(device), 4096, amp)  # warm-up
    for batch in (8, 16):
        sync()
        start, out = time.perf_counter(), []
        for i in range(0, len(frames), batch):
            out.append(
                rgb_to_yuv420p(upscale_batch(net, x[i : i + batch].to(device), 4096, amp))
                .cpu()
                .numpy()
            )
        sync()
        print(
            f"network + colour + yuv420p + copy back, batch {batch}: "
            f"{len(frames) / (time.perf_counter() - start):.1f} frames/s"
        )

    # the colour conversion alone: on the model's device (what a GPU does), or swscale's (a CPU)
    up = upscale_batch(net, x[:8].to(device), 4096, amp)
    sync()
    start = time.perf_counter()
    rgb_to_yuv420p(up)
    sync()
    torch_fps = len(up) / (time.perf_counter() - start)
    start = time.perf_counter()
    for picture in up.permute(0, 2, 3, 1).contiguous().cpu().numpy():
        av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
    sws_fps = len(up) / (time.perf_counter() - start)
    print(
        f"RGB -> yuv420p, {up.shape[-1]}x{up.shape[-2]}, a batch of {len(up)}: PyTorch on "
        f"{device.type} {torch_fps:.1f} frames/s, swscale (+ the NHWC copy) {sws_fps:.1f} frames/s"
    )

    planes = np.concatenate(out)[:100]
    h, w = planes.shape[1] * 2 // 3, planes.shape[2]
    for preset in ("ultrafast", "superfast", "veryfast"):
        for threads in ("SLICE", "FRAME"):  # PyAV's default, and what srctl video sets
            with av.open("/dev/null", "w", format="mp4") as f:
                v = f.add_stream("libx264", rate=30)
                v.width, v.height, v.pix_fmt = w, h, "yuv420p"
                v.options = {"crf": "18", "preset": preset}
                v.codec_context.thread_type = threads
                start, size = time.perf_counter(), 0
                for i, p in enumerate(planes):
                    frame = av.VideoFrame.from_numpy_buffer(p, format="yuv420p")
                    frame.pts, frame.time_base = i, Fraction(1, 30)
                    packets = v.encode(frame)
                    size += sum(pk.size for pk in packets)
                    f.mux(packets)
                f.mux(v.encode(None))
            print(
                f"libx264 {preset} alone, {threads.lower()} threads, {w}x{h}: "
                f"{len(planes) / (time.perf_counter() - start):.1f} frames/s, "
                f"{size / len(planes) / 1e3:.0f} kB/frame"
            )


if __name__ == "__main__":
    main()
