"""Upscale a video: frames in batches through the same path as `srctl infer`, audio copied as is.

PyAV (FFmpeg's libraries) decodes and encodes; each frame goes RGB -> upscale_batch -> RGB, so a
frame of the output equals `srctl infer` on that frame before the codec compresses it. Three pieces:
`_decoded` (demux + decode, in batches), `_upscaled` (the network), `_Encoder` (a second thread that
encodes and muxes in order).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from functools import partial
from pathlib import Path
from queue import Queue

import torch

from srctl import model as M
from srctl.color import rgb_to_yuv420p
from srctl.errors import SrctlError
from srctl.files import atomic_path
from srctl.infer import output_paths
from srctl.pictures import TILE, target_size
from srctl.upscale import resized, upscale_batch


def _pix_fmt(codec: str) -> str:
    """RGB when the encoder takes it (png, ffv1, libx264rgb: lossless), else 4:2:0 for players."""
    import av

    formats = {f.name for f in av.codec.Codec(codec, "w").video_formats or ()}
    return "rgb24" if "rgb24" in formats else "yuv420p"


def _decoded(inp, vin, ain, batch: int) -> Iterator[list]:
    """In stream order: lists of up to `batch` decoded video frames, and audio packets as [it]."""
    pending: list = []
    for packet in inp.demux(*(st for st in (vin, ain) if st)):
        if packet.stream is ain:
            if packet.dts is not None:  # the demuxer's flush packet has none
                yield [packet]
            continue
        pending.extend(packet.decode())
        if len(pending) >= batch:
            yield pending
            pending = []
    if pending:
        yield pending


def _upscaled(
    net: M.ESPCN, frames: list, tile: int, amp: torch.dtype | None, yuv: bool, size
) -> list:
    """Decoded frames -> upscaled ones (yuv420p made on the model's device if `yuv`, else rgb24),
    resized to `size` if given (as `srctl infer --size`; a side from the aspect ratio even)."""
    import av

    device = next(net.parameters()).device
    x = torch.stack(
        [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1) for f in frames]
    )
    up = upscale_batch(net, x.to(device), tile, amp)
    if size:
        up = resized(up, size, multiple=2)
    if yuv:
        arrays, fmt = rgb_to_yuv420p(up).cpu().numpy(), "yuv420p"
    else:
        arrays, fmt = up.permute(0, 2, 3, 1).contiguous().cpu().numpy(), "rgb24"
    return [
        av.VideoFrame.from_numpy_buffer(a, format=fmt) for a in arrays
    ]  # no copy: 4K frames add up


class _Encoder:
    """The output side: a video stream of `size` (width, height) (and a copy of the input's audio
    stream) in `out`; encodes frames and muxes them with audio packets, in order, in a second
    thread. A failure there is raised in the caller's thread by `close` (or the next `put_*`)."""

    def __init__(self, out, vin, ain, size, codec: str, crf: int, preset: str, depth: int):
        rate = vin.average_rate or vin.guessed_rate or Fraction(25)
        self.out, self.time_base = out, 1 / Fraction(rate)
        self.vout = out.add_stream(codec, rate=rate)
        self.vout.width, self.vout.height = size
        self.vout.pix_fmt = _pix_fmt(codec)
        if codec.startswith("libx26"):
            self.vout.options = {"crf": str(crf), "preset": preset}
        self.aout = out.add_stream_from_template(ain) if ain else None
        # yuv420p made on the model's device when the frame size allows it, else rgb24 to swscale
        self.yuv = (
            self.vout.pix_fmt == "yuv420p"
            and self.vout.width % 2 == 0
            and self.vout.height % 4 == 0
        )
        self.queue: Queue = Queue(maxsize=depth)
        self.failures: list[BaseException] = []
        self.frames = 0
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def put_frame(self, frame) -> None:
        frame.pts, frame.time_base = self.frames, self.time_base
        self.frames += 1
        self._put(frame)

    def put_audio(self, packet) -> None:
        packet.stream = self.aout
        self._put(packet)

    def _put(self, item) -> None:
        if self.failures:
            raise self.failures[0]
        self.queue.put(item)

    def _work(self) -> None:  # keeps draining after a failure, so that `put` never blocks for ever
        import av

        while (item := self.queue.get()) is not None:
            if self.failures:
                continue
            try:
                self.out.mux(self.vout.encode(item) if isinstance(item, av.VideoFrame) else item)
            except BaseException as exc:  # re-raised in the caller's thread
                self.failures.append(exc)
        if not self.failures:
            try:
                self.out.mux(self.vout.encode(None))
            except BaseException as exc:
                self.failures.append(exc)

    def close(self, check: bool = True) -> None:
        """Flush the encoder and wait for the thread; raise what failed there (if `check`)."""
        self.queue.put(None)
        self.thread.join()
        if check and self.failures:
            raise self.failures[0]


def _open(src: Path):
    import av

    try:
        inp = av.open(str(src))
    except (av.error.FFmpegError, OSError) as exc:
        raise SrctlError(f"{src}: not a readable video ({exc})") from exc
    if not inp.streams.video:
        inp.close()
        raise SrctlError(f"{src}: has no video stream")
    return inp


def _transcode(inp, vin, ain, encoder: _Encoder, batch: int, progress: bool, upscale) -> None:
    """Decode `inp` in batches of frames, `upscale` each batch, hand frames and audio packets to
    `encoder` in order, and close it (after a failure without checking: that one is reported)."""
    import av
    from tqdm import tqdm

    bar = tqdm(total=vin.frames or None, unit="frame", disable=not progress, file=sys.stderr)
    try:
        for items in _decoded(inp, vin, ain, batch):
            if isinstance(items[0], av.Packet):
                encoder.put_audio(items[0])
                continue
            for up in upscale(items):
                encoder.put_frame(up)
            bar.update(len(items))
    except BaseException:
        encoder.close(check=False)
        raise
    finally:
        bar.close()
    encoder.close()


def upscale_video(
    src: Path,
    dst: Path | None,
    net: M.ESPCN,
    codec: str = "libx264",
    crf: int = 18,
    preset: str = "veryfast",
    batch: int = 8,
    amp: torch.dtype | None = None,
    tile: int | None = None,
    progress: bool = False,
    force: bool = False,
    size: tuple[int | None, int | None] | None = None,
) -> dict:
    """Write `dst` (default: <stem>_x<scale>.mp4 beside `src`; atomically) with every video frame of
    `src` upscaled (and resized to `size`, see infer.parse_size) and its audio track copied.
    Returns frames, seconds, fps, size and dst."""
    import av

    s, device = net.scale, next(net.parameters()).device
    dst = dst or src.with_name(f"{src.stem}_x{s}.mp4")
    output_paths([src], dst, s, force)  # the same refusals as infer: never the input, no clobbering
    tile = tile or (4096 if device.type == "cuda" else TILE)  # a GPU takes whole frames at once
    if device.type == "cuda":  # leave CPU cores to the decoder and encoder (+6% on an H100)
        torch.set_num_threads(min(4, torch.get_num_threads()))
    started = time.perf_counter()
    try:
        with _open(src) as inp, atomic_path(dst) as tmp, av.open(str(tmp), "w") as out:
            vin = inp.streams.video[0]
            vin.thread_type = "AUTO"
            ain = inp.streams.audio[0] if inp.streams.audio else None
            frame = (vin.width * s, vin.height * s)
            frame = target_size(size, *frame, multiple=2) if size else frame
            encoder = _Encoder(out, vin, ain, frame, codec, crf, preset, depth=4 * batch)
            upscale = partial(_upscaled, net, tile=tile, amp=amp, yuv=encoder.yuv, size=size)
            _transcode(inp, vin, ain, encoder, batch, progress, upscale)
            if encoder.frames == 0:
                raise SrctlError(f"{src}: no video frames decoded")
    except av.error.FFmpegError as exc:
        raise SrctlError(f"{src}: video processing failed ({exc})") from exc
    seconds = time.perf_counter() - started
    size = (encoder.vout.width, encoder.vout.height)
    return {
        "frames": encoder.frames,
        "seconds": seconds,
        "fps": encoder.frames / seconds,
        "size": size,
        "dst": dst,
    }
