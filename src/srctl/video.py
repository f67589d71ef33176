"""Upscale a video: frames in batches through the same path as `srctl infer`, audio copied as is.

PyAV (FFmpeg's libraries) decodes and encodes; each frame goes RGB -> upscale_batch -> RGB, so a
frame of the output equals `srctl infer` on that frame before the codec compresses it. Three stages,
each in its own thread so that they overlap: `_decoded` (demux + decode into NHWC batches, pinned
on a GPU; `_prefetched` runs it), `_upscaled` (the network, in the caller's thread; on a GPU it only
queues work), `_Encoder` (encodes and muxes in order, once the GPU has copied a batch back).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from functools import partial
from pathlib import Path
from queue import Empty, Queue

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


class _Busy:
    """Seconds each stage spent working (not waiting for the others): says which one limits."""

    def __init__(self):
        self.seconds = {"decode": 0.0, "upscale": 0.0, "gpu": 0.0, "encode": 0.0}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


def _decoded(inp, vin, ain, batch: int, pin: bool, busy: _Busy) -> Iterator[tuple]:
    """In stream order: (audio packets, uint8 [N, H, W, 3] RGB batch of up to `batch` decoded
    frames, or None at the end), the batch in pinned memory if `pin` (for an asynchronous copy to
    the GPU). The muxer interleaves the audio by time, so it may travel with the next batch."""

    def stacked(frames: list) -> torch.Tensor:
        first = frames[0].to_ndarray(format="rgb24")
        x = torch.empty((len(frames), *first.shape), dtype=torch.uint8, pin_memory=pin)
        for i, f in enumerate(frames):
            x[i] = torch.from_numpy(first if i == 0 else f.to_ndarray(format="rgb24"))
        return x

    audio: list = []
    frames: list = []
    packets = inp.demux(*(st for st in (vin, ain) if st))
    while True:
        with busy("decode"):
            packet = next(packets, None)
            if packet is not None and packet.stream is ain:
                if packet.dts is not None:  # the demuxer's flush packet has none
                    audio.append(packet)
            elif packet is not None:
                frames.extend(packet.decode())
            full = len(frames) >= batch or (packet is None and frames)
            item = (audio, stacked(frames)) if full else None
        if item:
            yield item
            audio, frames = [], []
        if packet is None:
            break
    if audio:
        yield audio, None


def _prefetched(items: Iterator, depth: int) -> Iterator:
    """`items`, made by a second thread up to `depth` ahead; its failure is raised here. Closing
    this generator stops and joins that thread (it must not outlive the files it reads)."""
    queue: Queue = Queue(maxsize=depth)
    end, stop, failures = object(), threading.Event(), []

    def work() -> None:
        try:
            for item in items:
                queue.put(item)
                if stop.is_set():
                    return
        except BaseException as exc:  # re-raised in the caller's thread
            failures.append(exc)
        finally:
            queue.put(end)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not end:
            yield item
        if failures:
            raise failures[0]
    finally:
        stop.set()
        while thread.is_alive():  # unblock a `put` on a full queue
            with contextlib.suppress(Empty):
                queue.get(timeout=0.01)
        thread.join()


def _upscaled(net: M.ESPCN, x: torch.Tensor, tile: int, amp, yuv: bool, size):
    """uint8 [N, H, W, 3] RGB frames -> (upscaled frames as uint8 arrays on the CPU, their PyAV
    format, a CUDA event to wait for before reading them or None). yuv420p is made on the model's
    device if `yuv`, else rgb24; resized to `size` if given (as `srctl infer --size`; a side from
    the aspect ratio even). On a GPU nothing here waits for it: the copy back is asynchronous, into
    pinned memory."""
    device = next(net.parameters()).device
    cuda = device.type == "cuda"
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2)  # NCHW view of NHWC: no copy
    up = upscale_batch(net, x, tile, amp)
    if size:
        up = resized(up, size, multiple=2)
    arrays, fmt = (rgb_to_yuv420p(up), "yuv420p") if yuv else (up.permute(0, 2, 3, 1), "rgb24")
    arrays = arrays.contiguous().to("cpu", non_blocking=cuda)
    ready = None
    if cuda:
        ready = torch.cuda.Event()
        ready.record()
    return arrays, fmt, ready


class _Encoder:
    """The output side: a video stream of `size` (width, height) (and a copy of the input's audio
    stream) in `out`; encodes frames and muxes them with audio packets, in order, in a second
    thread, up to `depth` batches behind. A failure there is raised in the caller's thread by
    `close` (or the next `put`)."""

    def __init__(
        self, out, vin, ain, size, codec: str, crf: int, preset: str, depth: int, busy: _Busy
    ):
        rate = vin.average_rate or vin.guessed_rate or Fraction(25)
        self.out, self.time_base = out, 1 / Fraction(rate)
        self.vout = out.add_stream(codec, rate=rate)
        self.vout.width, self.vout.height = size
        self.vout.pix_fmt = _pix_fmt(codec)
        if codec.startswith("libx26"):
            self.vout.options = {"crf": str(crf), "preset": preset}
            # PyAV opens encoders with slice threads; x264's frame threads are faster and compress
            # better (1080p on 2 cores: 1.36x ultrafast, 1.09x veryfast; bench/video_speed.py)
            self.vout.codec_context.thread_type = "FRAME"
        self.aout = out.add_stream_from_template(ain) if ain else None
        # yuv420p made on the model's device when the frame size allows it, else rgb24 to swscale
        self.yuv = (
            self.vout.pix_fmt == "yuv420p"
            and self.vout.width % 2 == 0
            and self.vout.height % 4 == 0
        )
        self.queue: Queue = Queue(maxsize=depth)
        self.failures: list[BaseException] = []
        self.frames = 0  # handed over
        self.busy = busy
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def put(self, audio: list, frames: tuple | None) -> None:
        """Audio packets, then `frames` if any: (uint8 arrays in PyAV's layout of their format,
        the format, a CUDA event to wait for before reading them or None)."""
        if self.failures:
            raise self.failures[0]
        self.frames += len(frames[0]) if frames else 0
        self.queue.put((audio, frames))

    def _work(self) -> None:  # keeps draining after a failure, so that `put` never blocks for ever
        import av

        pts = 0
        while (item := self.queue.get()) is not None:
            if self.failures:
                continue
            try:
                audio, frames = item
                for packet in audio:
                    packet.stream = self.aout
                    self.out.mux(packet)
                if frames is None:
                    continue
                arrays, fmt, ready = frames
                if ready is not None:
                    with self.busy("gpu"):  # the GPU's share of the time, as far as it shows
                        ready.synchronize()
                for a in arrays.numpy():
                    with self.busy("encode"):
                        frame = av.VideoFrame.from_numpy_buffer(a, format=fmt)  # no copy: 4K
                        frame.pts, frame.time_base = pts, self.time_base
                        pts += 1
                        self.out.mux(self.vout.encode(frame))
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


def _transcode(
    inp, vin, ain, encoder: _Encoder, batch: int, pin: bool, progress: bool, upscale
) -> None:
    """Decode `inp` in batches of frames (a thread ahead), `upscale` each batch, hand frames and
    audio packets to `encoder` in order, and close it (after a failure without checking: that one
    is reported)."""
    from tqdm import tqdm

    busy = encoder.busy
    bar = tqdm(total=vin.frames or None, unit="frame", disable=not progress, file=sys.stderr)
    items = _prefetched(_decoded(inp, vin, ain, batch, pin, busy), depth=2)
    try:
        for audio, x in items:
            frames = None
            if x is not None:
                with busy("upscale"):
                    frames = upscale(x)
            encoder.put(audio, frames)
            bar.update(0 if x is None else len(x))
    except BaseException:
        items.close()  # the decoding thread ends before the input is closed
        encoder.close(check=False)
        raise
    finally:
        bar.close()
    items.close()
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
    Returns frames, seconds, fps, size, dst, and busy: the seconds each stage (decode, upscale,
    gpu, encode) spent working, which tell the one that limits the rest."""
    import av

    s, device = net.scale, next(net.parameters()).device
    dst = dst or src.with_name(f"{src.stem}_x{s}.mp4")
    output_paths([src], dst, s, force)  # the same refusals as infer: never the input, no clobbering
    tile = tile or (4096 if device.type == "cuda" else TILE)  # a GPU takes whole frames at once
    if device.type == "cuda":  # leave CPU cores to the decoder and encoder (+6% on an H100)
        torch.set_num_threads(min(4, torch.get_num_threads()))
    started, busy = time.perf_counter(), _Busy()
    try:
        with _open(src) as inp, atomic_path(dst) as tmp, av.open(str(tmp), "w") as out:
            vin = inp.streams.video[0]
            vin.thread_type = "AUTO"
            ain = inp.streams.audio[0] if inp.streams.audio else None
            frame = (vin.width * s, vin.height * s)
            frame = target_size(size, *frame, multiple=2) if size else frame
            encoder = _Encoder(out, vin, ain, frame, codec, crf, preset, depth=4, busy=busy)
            upscale = partial(_upscaled, net, tile=tile, amp=amp, yuv=encoder.yuv, size=size)
            _transcode(inp, vin, ain, encoder, batch, device.type == "cuda", progress, upscale)
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
        "busy": busy.seconds,
    }
