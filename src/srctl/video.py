"""Upscale a video: frames in batches through the same path as `srctl infer`, audio copied as is.

PyAV (FFmpeg's libraries) decodes and encodes; each frame goes RGB -> upscale_batch -> RGB, so a
frame of the output equals `srctl infer` on that frame before the codec compresses it.
"""

from __future__ import annotations

import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from queue import Queue

import torch

from srctl import model as M
from srctl.color import rgb_to_yuv420p
from srctl.errors import SrctlError
from srctl.files import atomic_path
from srctl.infer import TILE, upscale_batch


def _pix_fmt(codec: str) -> str:
    """RGB when the encoder takes it (png, ffv1, libx264rgb: lossless), else 4:2:0 for players."""
    import av

    formats = {f.name for f in av.codec.Codec(codec, "w").video_formats or ()}
    return "rgb24" if "rgb24" in formats else "yuv420p"


def upscale_video(
    src: Path,
    dst: Path,
    net: M.ESPCN,
    codec: str = "libx264",
    crf: int = 18,
    preset: str = "veryfast",
    batch: int = 8,
    amp: torch.dtype | None = None,
    tile: int | None = None,
    progress: bool = False,
) -> dict:
    """Write `dst` (atomically) with every video frame of `src` upscaled and its audio track copied.

    A second thread encodes and muxes while the main one decodes and runs the network; for 4:2:0
    encoders the RGB -> yuv420p conversion runs on the model's device, not in swscale."""
    import av
    from tqdm import tqdm

    try:
        inp = av.open(str(src))
    except (av.error.FFmpegError, OSError) as exc:
        raise SrctlError(f"{src}: not a readable video ({exc})") from exc
    with inp:
        if not inp.streams.video:
            raise SrctlError(f"{src}: has no video stream")
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        ain = inp.streams.audio[0] if inp.streams.audio else None
        rate = vin.average_rate or vin.guessed_rate or Fraction(25)
        s = net.scale
        device = next(net.parameters()).device
        tile = tile or (4096 if device.type == "cuda" else TILE)  # a GPU takes whole frames at once
        if device.type == "cuda":  # leave the CPU cores to the decoder and encoder (+6% measured on an H100)
            torch.set_num_threads(min(4, torch.get_num_threads()))
        started, frames = time.perf_counter(), 0
        try:
            with atomic_path(dst) as tmp, av.open(str(tmp), "w") as out:
                vout = out.add_stream(codec, rate=rate)
                vout.width, vout.height, vout.pix_fmt = vin.width * s, vin.height * s, _pix_fmt(codec)
                if codec.startswith("libx26"):
                    vout.options = {"crf": str(crf), "preset": preset}
                aout = out.add_stream_from_template(ain) if ain else None
                yuv = vout.pix_fmt == "yuv420p" and vout.width % 2 == 0 and vout.height % 4 == 0
                bar = tqdm(total=vin.frames or None, unit="frame", disable=not progress, file=sys.stderr)
                queue: Queue = Queue(maxsize=4 * batch)
                failures: list[BaseException] = []

                def writer() -> None:  # encodes and muxes in order; keeps draining after a failure
                    while (item := queue.get()) is not None:
                        if failures:
                            continue
                        try:
                            out.mux(vout.encode(item) if isinstance(item, av.VideoFrame) else item)
                        except BaseException as exc:  # re-raised in the main thread
                            failures.append(exc)
                    if not failures:
                        try:
                            out.mux(vout.encode(None))
                        except BaseException as exc:
                            failures.append(exc)

                thread = threading.Thread(target=writer, daemon=True)
                thread.start()
                pending: list = []

                def flush() -> None:
                    nonlocal frames
                    x = torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1) for f in pending])
                    up = upscale_batch(net, x.to(device), tile, amp)
                    if yuv:
                        arrays, fmt = rgb_to_yuv420p(up).cpu().numpy(), "yuv420p"
                    else:
                        arrays, fmt = up.permute(0, 2, 3, 1).contiguous().cpu().numpy(), "rgb24"
                    for a in arrays:
                        frame = av.VideoFrame.from_numpy_buffer(a, format=fmt)  # no copy: 4K frames add up
                        frame.pts, frame.time_base = frames, 1 / Fraction(rate)
                        queue.put(frame)
                        frames += 1
                    bar.update(len(pending))
                    pending.clear()

                try:
                    for packet in inp.demux(*(st for st in (vin, ain) if st)):
                        if failures:
                            break
                        if packet.stream is ain:
                            if packet.dts is not None:  # the demuxer's flush packet has none
                                packet.stream = aout
                                queue.put(packet)
                            continue
                        pending.extend(packet.decode())
                        if len(pending) >= batch:
                            flush()
                    if pending and not failures:
                        flush()
                finally:
                    queue.put(None)
                    thread.join()
                    bar.close()
                if failures:
                    raise failures[0]
                if frames == 0:
                    raise SrctlError(f"{src}: no video frames decoded")
        except av.error.FFmpegError as exc:
            raise SrctlError(f"{src}: video processing failed ({exc})") from exc
    seconds = time.perf_counter() - started
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds, "size": (vout.width, vout.height)}
