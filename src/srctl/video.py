"""Upscale a video: frames in batches through the same path as `srctl infer`; audio tracks and
subtitles copied as they are.

PyAV (FFmpeg's libraries) decodes and encodes; each frame goes RGB (as players show it:
progressive, turned, SDR) -> upscale_batch -> RGB, so a frame of the output equals `srctl infer`
on that frame before the codec compresses it. Three stages, each in its own thread so that they
overlap: `_decoded` (demux + decode into NHWC batches, pinned on a GPU; `_prefetched` runs it),
`_upscaled` (the network, in the caller's thread; on a GPU it only queues work), `_Encoder`
(encodes, in segments by several encoders at once if asked, and muxes in order, once the GPU has
copied a batch back).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from fractions import Fraction
from functools import partial
from pathlib import Path
from queue import Empty, Queue

import numpy as np
import torch

from srctl import model as M
from srctl.color import rgb_to_yuv420p
from srctl.errors import SrctlError
from srctl.files import atomic_path
from srctl.infer import check_outputs, is_folder
from srctl.pictures import TILE, target_size
from srctl.upscale import resized, upscale_batch

# encoders that take any time base (x264 and x265, the lossless ones), so frames keep their source
# timestamps exactly
ANY_TIME_BASE = ("libx264", "libx264rgb", "libx265", "png", "ffv1", "libvpx-vp9", "libaom-av1")


def _pix_fmt(codec: str) -> str:
    """RGB when the encoder takes it (png, ffv1, libx264rgb: lossless), else 4:2:0 for players."""
    import av

    formats = {f.name for f in av.codec.Codec(codec, "w").video_formats or ()}
    return "rgb24" if "rgb24" in formats else "yuv420p"


def _how_shown(events: Iterator, vin) -> tuple:
    """How players show the video of `events` (`_demuxed`), told by its first frame: its stored
    size (width, height; FFmpeg's stream size may be a later frame's), its turn (`_orientation`),
    the options that decode its frames to the RGB they show and the colour primaries and transfer
    that RGB then has (`_colours`); then `events` again, from the start. The input is read once:
    a live stream or a pipe cannot be opened a second time."""
    seen = []
    for event in events:
        seen.append(event)
        if event[1]:
            first = event[1][0]
            break
    else:
        first = None
    size = (first.width, first.height) if first else (vin.width, vin.height)
    return size, _orientation(first), *_colours(first), itertools.chain(seen, events)


def _orientation(first) -> tuple[bool, bool, bool]:
    """How players turn the stored frames, from the display matrix of the first frame: (swap
    width and height, then mirror left-right, mirror top-bottom). A phone stores a clip filmed
    upright as landscape frames with a quarter turn in that matrix; angles other than multiples of
    90 degrees are left as stored."""
    import av

    kind = av.sidedata.sidedata.Type.DISPLAYMATRIX
    matrix = bytes(first.side_data[kind]) if first and kind in first.side_data else None
    if matrix is None:
        return False, False, False
    # FFmpeg's layout: a stored point (p, q) is shown at (a p + c q, b p + d q) (+ an offset)
    a, b, _, c, d, *_ = np.sign(np.frombuffer(matrix, dtype=np.int32)).tolist()
    if a == d == 0 and b and c:  # a quarter turn: the shown column is the stored row
        return True, c < 0, b < 0
    if b == c == 0 and a and d:
        return False, a < 0, d < 0
    return False, False, False


# AVColorTransferCharacteristic / AVColorPrimaries values (ITU-T H.273)
BT709, UNSPECIFIED, PQ, HLG = 1, 2, 16, 18
WIDE_GAMUT = (9, 11, 12)  # BT.2020, DCI-P3, Display P3


def _colours(first) -> tuple[dict, tuple[int, int]]:
    """swscale's options that turn frames like `first` into the RGB the network was trained on
    (SDR photos, BT.709 primaries) as players show them, and the (primaries, transfer) of that
    RGB: the output's tags.

    A YUV matrix that is not tagged is the one players guess: BT.709 for HD sizes, BT.601 below
    (mpv's and VLC's rule; swscale would take BT.601 for all). HDR (a phone's HLG, HDR10's PQ)
    and wide gamuts are tone- and gamut-mapped to BT.709 SDR by swscale: decoded as they are,
    their values came out grey and washed out."""
    if first is None:
        return {}, (UNSPECIFIED, UNSPECIFIED)
    options = {}
    if first.colorspace == UNSPECIFIED and (first.width >= 1280 or first.height > 576):
        options["src_colorspace"] = "itu709"
    if first.color_trc in (PQ, HLG) or first.color_primaries in WIDE_GAMUT:
        options.update(dst_color_trc=BT709, dst_color_primaries=BT709)
        return options, (BT709, BT709)
    return options, (first.color_primaries, first.color_trc)


def _upright(x: torch.Tensor, turn: tuple[bool, bool, bool]) -> torch.Tensor:
    """[N, H, W, C] frames as `_orientation` says players show them."""
    swap, mirror_w, mirror_h = turn
    x = x.transpose(1, 2) if swap else x
    dims = [dim for dim, mirrored in ((2, mirror_w), (1, mirror_h)) if mirrored]
    return x.flip(dims) if dims else x


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


class _ToRGB:
    """Decoded frames -> uint8 [H, W, 3] RGB arrays of `size` (width, height), by swscale with the
    options `colours` (`_colours`). A frame of another size (a video call's resolution drops and
    climbs back; clips joined) is scaled to it, bicubic: the output has one size. `scaled` counts
    those frames. One swscale context per stored size, not one per frame as `frame.to_ndarray`
    makes: a tone map's set-up (1.8 s on the EPYC) is paid once."""

    def __init__(self, colours: dict, size: tuple[int, int]):
        self.colours, self.size, self.scaled = colours, size, 0
        self.contexts: dict = {}

    def __call__(self, frame) -> np.ndarray:
        stored = (frame.width, frame.height)
        if stored not in self.contexts:
            from av.video.reformatter import VideoReformatter

            self.contexts[stored] = VideoReformatter()
        reformat = partial(self.contexts[stored].reformat, frame, format="rgb24", **self.colours)
        if stored == self.size:
            return reformat().to_ndarray()
        self.scaled += 1
        return reformat(*self.size, interpolation="BICUBIC").to_ndarray()


class _Progressive:
    """Decoded frames -> the frames players show, in time: interlaced ones (a DVD's, a camcorder's,
    broadcast) made progressive by FFmpeg's bwdif, one frame out per frame in, each with its
    timestamp; upscaled as stored, their fields' combs on every moving edge came out 3 times as
    wide. Until a frame is flagged interlaced, frames pass as they are; `None` flushes."""

    def __init__(self):
        self.graph, self.made_for = None, None  # the filter, for frames of one size and format
        self.pts: deque = deque()  # of the frames in the filter, in order

    def __call__(self, frames: list | None) -> list:
        out: list = []
        for f in frames if frames is not None else []:
            if self.graph is None and not f.interlaced_frame:
                out.append(f)
                continue
            kind = (f.width, f.height, f.format.name)
            if kind != self.made_for:  # the first interlaced frame, or a new size
                out += self._flushed()
                self._make(kind)
            self.pts.append(f.pts)
            f.pts = self.count = self.count + 1  # (the filter wants increasing ones)
            self.graph.push(f)
            out += self._pulled()
        return out + (self._flushed() if frames is None else [])

    def _make(self, kind: tuple) -> None:
        import av.filter

        self.graph, self.made_for, self.count = av.filter.Graph(), kind, 0
        w, h, fmt = kind
        source = self.graph.add_buffer(width=w, height=h, format=fmt, time_base=Fraction(1, 1000))
        bwdif = self.graph.add("bwdif", "mode=send_frame:parity=auto:deint=interlaced")
        source.link_to(bwdif)
        bwdif.link_to(self.graph.add("buffersink"))
        self.graph.configure()

    def _pulled(self) -> list:
        import av

        out = []
        while True:
            try:
                f = self.graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return out
            f.pts = self.pts.popleft()
            out.append(f)

    def _flushed(self) -> list:
        if self.made_for is None:  # no filter, or flushed
            return []
        self.graph.push(None)
        out, self.made_for = self._pulled(), None
        return out


class _Damage:
    """What a damaged input cost: video packets the decoder refused (skipped), frames it flagged
    as concealed (kept: players show them so too)."""

    def __init__(self):
        self.packets, self.frames = 0, 0


def _demuxed(inp, vin, others, stop: threading.Event, damage: _Damage) -> Iterator[tuple]:
    """`inp` in stream order: (a packet of the `others` streams (audio, subtitles), None), or
    (None, the frames of `vin` a packet decoded to); until its end, or `stop` is set. A damaged
    file (bits flipped on a disk, a transfer cut) goes on as players and ffmpeg go on, counted in
    `damage`: one bad packet no longer loses the whole video."""
    import av

    for packet in inp.demux(vin, *others):
        if stop.is_set():
            yield None, vin.decode(None)  # the frames the decoder still holds
            return
        if packet.stream is not vin:
            if packet.size:  # (the demuxer's flush packets are empty)
                yield packet, None
            continue
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            damage.packets += 1
            continue
        damage.frames += sum(f.is_corrupt for f in frames)
        yield None, frames


@contextlib.contextmanager
def _ctrl_c_ends(stream: bool, stop: threading.Event):
    """While a `stream` is read (a live one has no end of its own), Ctrl-C sets `stop`: the input
    ends there, and what came is upscaled and the output completed. A second Ctrl-C aborts. A
    file's Ctrl-C aborts at once (and leaves no output), as does one where SIGINT is ignored."""
    main = threading.current_thread() is threading.main_thread()
    if not (stream and main and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN):
        yield
        return

    def ctrl_c(*_) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _decoded(events: Iterator, batch: int, pin: bool, busy: _Busy, rgb: _ToRGB) -> Iterator[tuple]:
    """In stream order: (packets to copy, uint8 [N, H, W, 3] RGB batch of up to `batch` decoded
    frames or None at the end, the frames' timestamps), from `events` (`_demuxed`), the batch in
    pinned memory if `pin` (for an asynchronous copy to the GPU), each frame made RGB by `rgb`. The
    muxer interleaves the packets by time, so they may travel with the next batch."""

    def stacked(frames: list) -> torch.Tensor:
        first = rgb(frames[0])
        x = torch.empty((len(frames), *first.shape), dtype=torch.uint8, pin_memory=pin)
        for i, f in enumerate(frames):
            x[i] = torch.from_numpy(first if i == 0 else rgb(f))
        return x

    copied: list = []
    frames: list = []
    progressive = _Progressive()
    while True:
        with busy("decode"):
            event = next(events, None)
            if event is not None and event[0] is not None:
                copied.append(event[0])
            else:
                frames += progressive(event[1] if event is not None else None)
            full = len(frames) >= batch or (event is None and frames)
            item = (copied, stacked(frames), [f.pts for f in frames]) if full else None
        if item:
            yield item
            copied, frames = [], []
        if event is None:
            break
    if copied:
        yield copied, None, []


def _prefetched(items: Iterator, depth: int, merge=None) -> Iterator:
    """`items`, made by a second thread up to `depth` ahead (0: no limit); its failure is raised
    here. With `merge`, the items waiting when one is taken are merged into it, in order
    (merge(older, newer) -> one). Closing this generator stops and joins that thread (it must not
    outlive the files it reads)."""
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
        ended = False
        while not ended and (item := queue.get()) is not end:
            while merge is not None:
                try:
                    newer = queue.get_nowait()
                except Empty:
                    break
                if newer is end:
                    ended = True
                    break
                item = merge(item, newer)
            yield item
        if failures:
            raise failures[0]
    finally:
        stop.set()
        while thread.is_alive():  # unblock a `put` on a full queue
            with contextlib.suppress(Empty):
                queue.get(timeout=0.01)
        thread.join()


def _upscaled(
    net: M.ESPCN, x: torch.Tensor, tile: int, amp, yuv: bool, size, crop, turn=(False,) * 3
):
    """uint8 [N, H, W, 3] RGB frames -> (upscaled frames as uint8 arrays on the CPU, their PyAV
    format, a CUDA event to wait for before reading them or None). Turned upright first (`turn`,
    from `_orientation`); yuv420p is made on the model's device if `yuv`, else rgb24; resized to
    `size` if given (as `srctl infer --size`; a side from the aspect ratio even), then cropped to
    `crop` (width, height). On a GPU nothing here waits for it: the copy back is asynchronous,
    into pinned memory."""
    device = next(net.parameters()).device
    cuda = device.type == "cuda"
    x = _upright(x.to(device, non_blocking=True), turn)
    x = x.permute(0, 3, 1, 2)  # NCHW view of NHWC: no copy
    up = upscale_batch(net, x, tile, amp)
    if size:
        up = resized(up, size, multiple=2)
    up = up[:, :, : crop[1], : crop[0]]
    arrays, fmt = (rgb_to_yuv420p(up), "yuv420p") if yuv else (up.permute(0, 2, 3, 1), "rgb24")
    arrays = arrays.contiguous().to("cpu", non_blocking=cuda)
    ready = None
    if cuda:
        ready = torch.cuda.Event()
        ready.record()
    return arrays, fmt, ready


class _Encoder:
    """The output side: a video stream of `size` (width, height) of pixels `sar` times as wide as
    high, its colours of (primaries, transfer) `tags`, and copies of the input's `others` streams
    (audio tracks, subtitles; those `out`'s format cannot hold are left out, named in `left_out`; an
    audio track among them, or a `codec` it cannot hold, raises ValueError saying what to do), in
    `out`. Frames are encoded in other threads and muxed with the copied packets, in order, by a
    muxing thread; at most `depth` frames wait to be encoded. With `encoders` > 1 the video is cut
    into segments of `segment_s` seconds, each encoded by an encoder of its own (so each starts on
    a keyframe), up to `encoders` at once, and their packets are joined in order: one x264 at 4K is
    slower than the GPU. `live`: x264/x265 keep no frames back (see upscale_video). A failure in a
    thread is raised in the caller's by `close` (or the next `put`)."""

    def __init__(
        self, out, vin, others, size, codec: str, crf: int, preset: str, depth: int, busy: _Busy,
        encoders: int = 1, segment_s: float = 2.0, sar: Fraction = Fraction(1),
        tags: tuple[int, int] = (UNSPECIFIED, UNSPECIFIED), live: bool = False,
    ):  # fmt: skip
        from concurrent.futures import ThreadPoolExecutor

        rate = Fraction(vin.average_rate or vin.guessed_rate or 25)
        try:
            self.out, self.vout = out, out.add_stream(codec, rate=rate)
        except ValueError as exc:  # "'webm' format does not support 'libx264' codec"
            raise ValueError(f"{exc}: choose another --codec or suffix") from exc
        # each frame keeps its source timestamp: a phone's variable frame rate and a stream that
        # starts late stay in step with the copied audio. In the source's time base for encoders
        # that take any; others (mpeg4: denominators up to 65535; mpeg2video: standard rates only)
        # get 1/rate (a phone's 1799100/60007 made near: 29.98), each time rounded to it
        source = Fraction(vin.time_base or 1 / rate)
        any_base = self.vout.codec_context.name in ANY_TIME_BASE
        self.time_base = source if any_base else 1 / rate.limit_denominator(1001)
        self.vout.codec_context.time_base = self.time_base
        self.to_out = source / self.time_base  # source ticks -> output ticks
        self.tick = max(1, round(1 / (rate * self.time_base)))  # a frame's duration
        self.pts: int | None = None  # the last frame's
        self.vout.width, self.vout.height = size
        if sar != 1:  # the pixels' aspect ratio, where players read it (H.264's VUI, mp4's pasp)
            self.vout.codec_context.sample_aspect_ratio = sar
        self.vout.pix_fmt = _pix_fmt(codec)
        self.vout.codec_context.color_primaries, self.vout.codec_context.color_trc = tags
        if self.vout.pix_fmt == "yuv420p":
            # what both paths make (swscale's default, color.rgb_to_yuv420p): BT.601, studio range;
            # untagged, players take HD sizes for BT.709 and shift the colours
            self.vout.codec_context.colorspace = 6  # AVCOL_SPC_SMPTE170M
            self.vout.codec_context.color_range = 1  # AVCOL_RANGE_MPEG
        x26x = self.vout.codec_context.name.startswith("libx26")  # `h264` names libx264 too
        self.options = {"crf": str(crf), "preset": preset} if x26x else {}
        if x26x and live:  # no lookahead, no B-frames, slice threads: each frame out at once
            self.options["tune"] = "zerolatency"
        if self.vout.codec_context.name == "libx265":  # ~30 "x265 [info]" lines otherwise
            self.options["x265-params"] = "log-level=error"
        self.vout.options = dict(self.options)  # (emptied when the encoder opens)
        if x26x and not live:
            # PyAV opens encoders with slice threads; x264's frame threads are faster at 4K and
            # make smaller files (1.35-1.5x on the H200's 16 cores: README, bench/video_stages.py),
            # but each holds a frame back
            self.vout.codec_context.thread_type = "FRAME"
        self.copies, self.left_out = {}, []  # input stream index -> its copy; names
        for st in others:
            try:
                self.copies[st.index] = out.add_stream_from_template(st)
            except ValueError as exc:  # "'mp4' format does not support 'subrip' codec"
                if st.type == "audio":  # the sound is copied as it is: another container
                    msg = f"{exc} (the audio, copied as it is): choose another suffix"
                    raise ValueError(msg) from exc
                self.left_out.append(f"{st.codec_context.name} {st.type}")
                continue
            self.copies[st.index].metadata.update(st.metadata)  # a track's language and title
        # yuv420p can be made before the encoder (a GPU does: upscale_video) when the size allows it
        self.yuv = (
            self.vout.pix_fmt == "yuv420p"
            and self.vout.width % 2 == 0
            and self.vout.height % 4 == 0
        )
        out.start_encoding()  # the header, and the stream's encoder opened, before any thread runs
        self.segment = max(1, round(float(rate) * segment_s)) if encoders > 1 else 0  # 0: one
        self.slots = threading.Semaphore(depth + encoders * self.segment)
        self.pool = ThreadPoolExecutor(encoders, thread_name_prefix="encode")
        self.queue: Queue = Queue()  # to the muxer, in order: copied packets, segments' packets
        self.current: Queue | None = None  # frames of the segment being filled
        self.failures: list[BaseException] = []
        self.frames = 0  # handed over
        self.busy = busy
        self.thread = threading.Thread(target=self._mux, daemon=True)
        self.thread.start()

    def put(self, copied: list, frames: tuple | None, pts: list) -> None:
        """Packets to copy (audio, subtitles), then `frames` if any: (uint8 arrays in PyAV's layout
        of their format, the format, a CUDA event to wait for before reading them or None), and
        their source timestamps `pts` (one missing or out of order: a frame after the last)."""
        if self.failures:
            raise self.failures[0]
        if copied:
            self.queue.put(copied)
        arrays, fmt, ready = frames or ((), None, None)
        for i in range(len(arrays)):
            if self.current is None:
                self.current = self._start_segment()
            t = None if pts[i] is None else round(pts[i] * self.to_out)
            ok = t is not None and (self.pts is None or t > self.pts)
            self.pts = t if ok else (self.pts + self.tick if self.pts is not None else 0)
            self.slots.acquire()
            self.current.put((arrays, i, fmt, ready, self.pts))
            self.frames += 1
            if self.segment and self.frames % self.segment == 0:
                self.current.put(None)
                self.current = None

    def _start_segment(self) -> Queue:
        """A queue for a new segment's frames, and its encoding queued: the first segment is the
        stream's own encoder, later ones new encoders set up alike (checked: same headers)."""
        import av

        ctx = self.vout.codec_context
        if self.frames:
            ref, ctx = ctx, av.CodecContext.create(ctx.name, "w")
            ctx.width, ctx.height, ctx.pix_fmt = ref.width, ref.height, ref.pix_fmt
            ctx.colorspace, ctx.color_range = ref.colorspace, ref.color_range
            ctx.color_primaries, ctx.color_trc = ref.color_primaries, ref.color_trc
            if ref.sample_aspect_ratio:  # (None for square pixels, which PyAV cannot set)
                ctx.sample_aspect_ratio = ref.sample_aspect_ratio
            ctx.time_base, ctx.framerate, ctx.flags = ref.time_base, ref.framerate, ref.flags
            ctx.thread_type, ctx.options = ref.thread_type, dict(self.options)
        frames, packets = Queue(), Queue()
        self.pool.submit(self._encode, ctx, frames, packets)
        self.queue.put(packets)
        return frames

    def _encode(self, ctx, frames: Queue, packets: Queue) -> None:
        """One segment, in the pool: its frames from `frames` until None; its packets to
        `packets`, then None (or what failed)."""
        import av

        try:
            while (item := frames.get()) is not None:
                arrays, i, fmt, ready, pts = item
                try:
                    if ready is not None:
                        with self.busy("gpu"):  # the GPU's share of the time, as far as it shows
                            ready.synchronize()
                    with self.busy("encode"):
                        frame = av.VideoFrame.from_numpy_buffer(arrays[i].numpy(), format=fmt)
                        frame.pts, frame.time_base = pts, self.time_base  # (no copy: 4K frames)
                        packets.put(ctx.encode(frame))
                finally:
                    self.slots.release()
            packets.put(ctx.encode(None))
            if ctx.extradata != self.vout.codec_context.extradata:
                raise SrctlError("the segments' encoders wrote different headers: use --encoders 1")
            packets.put(None)
        except BaseException as exc:  # the muxer reports it; the frames still release their slots
            packets.put(exc)
            while frames.get() is not None:
                self.slots.release()

    def _mux(self) -> None:  # keeps draining after a failure, so that nothing waits for ever
        first_delay = None  # pts - dts of the first video packet
        last = None  # the last video packet's decoding time
        while (item := self.queue.get()) is not None:
            if isinstance(item, list):  # packets to copy: audio, subtitles
                copied = [p for p in item if p.stream.index in self.copies]
                for packet in copied:
                    packet.stream = self.copies[packet.stream.index]
                self._write(copied)
                continue
            shift = None
            while (packets := item.get()) is not None:  # a segment's, as they come
                if isinstance(packets, BaseException):
                    self.failures.append(packets)
                    break
                for packet in packets:
                    packet.stream = self.vout
                    # decoding times as if the first segment's encoder had gone on: x264 delays a
                    # short segment less, which left a gap in them at the join
                    if shift is None and packet.pts is not None and packet.dts is not None:
                        delay = packet.pts - packet.dts
                        first_delay = delay if first_delay is None else first_delay
                        shift = first_delay - delay
                    if packet.dts is not None:
                        # uneven frame times (a variable rate) delay segments unevenly: keep the
                        # decoding times increasing and none after its frame's showing time
                        dts = packet.dts - (shift or 0)
                        dts = min(dts, packet.pts) if packet.pts is not None else dts
                        packet.dts = last = dts if last is None else max(dts, last + 1)
                self._write(packets)

    def _write(self, packets: list) -> None:
        if self.failures:
            return
        try:
            for packet in packets:
                self.out.mux(packet)
        except BaseException as exc:  # re-raised in the caller's thread
            self.failures.append(exc)

    def close(self, check: bool = True) -> None:
        """End the last segment, wait for the encoders and the muxer; raise what failed there
        (if `check`)."""
        if self.current is not None:
            self.current.put(None)
            self.current = None
        self.pool.shutdown()
        self.queue.put(None)
        self.thread.join()
        if check and self.failures:
            raise self.failures[0]


STDIO = "-"  # as input: standard input; as output: Matroska to standard output


def is_stream(src: str | Path) -> bool:
    """Whether `src` is read as it comes rather than as a file: standard input (-) or a URL
    (rtsp://, srt://, http://, udp://...: a camera, a call, a game's stream)."""
    return str(src) == STDIO or re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", str(src)) is not None


def _output_format(dst: Path | str, codec: str) -> str:
    """The container format FFmpeg picks for `dst` by its suffix (Matroska for standard output),
    once `codec` is known to be a video encoder: bad options end here, before any file is written
    or frame decoded."""
    import av

    try:
        kind = av.codec.Codec(codec, "w").type
    except ValueError:  # av.codec.codec.UnknownCodecError
        kind = None
    if kind != "video":
        raise SrctlError(f"--codec {codec}: not a video encoder (libx264, libx265, png, ffv1, ...)")
    if str(dst) == STDIO:
        return "matroska"  # holds any codec, audio and subtitles; players read it from a pipe
    try:
        with av.open(str(dst), "w") as out:  # (writes nothing until encoding starts)
            return out.format.name
    except (ValueError, av.error.FFmpegError) as exc:
        msg = "no video format by that name's suffix (.mp4, .mkv, .mov, ...)"
        raise SrctlError(f"{dst}: {msg}") from exc


def _name(src: Path | str) -> str:
    return "standard input" if str(src) == STDIO else str(src)


def _open(src: Path | str):
    import av

    name = _name(src)
    try:
        # a damaged file's tags may not be UTF-8: they are only copied, never read
        inp = av.open("pipe:0" if str(src) == STDIO else str(src), metadata_errors="replace")
    except (av.error.FFmpegError, OSError) as exc:
        raise SrctlError(f"{name}: not a readable video ({exc})") from exc
    if not inp.streams.video:
        inp.close()
        raise SrctlError(f"{name}: has no video stream")
    return inp


@contextlib.contextmanager
def _written(dst: Path | str, fmt: str):
    """The output container: `dst` under a temporary name, renamed once complete; or standard
    output, as it comes: a Matroska cluster a packet (by default the muxer holds a second's or
    32 KB's, which a player then showed at once)."""
    import av

    if str(dst) == STDIO:
        with av.open(
            "pipe:1", "w", format=fmt, container_options={"cluster_time_limit": "0"}
        ) as out:
            yield out
        return
    with atomic_path(dst) as tmp, av.open(str(tmp), "w", format=fmt) as out:
        yield out


def _cut_short(inp, vin, encoder: _Encoder) -> tuple[float, float] | None:
    """(the second the video ended, the one its header gives) when it ended well before: a file
    cut short (a download or copy that stopped), or damaged where its demuxer lost the thread;
    else None. Matroska gives the length of all streams: its sound may run on a little."""
    if vin.duration:
        stated = float(vin.duration * vin.time_base)
    elif inp.duration:
        stated = inp.duration / 1e6  # in av.time_base units
    else:
        return None
    start = float(vin.start_time * vin.time_base) if vin.start_time is not None else 0.0
    ended = float((encoder.pts + encoder.tick) * encoder.time_base) - start
    return (ended, stated) if stated - ended > max(1.0, 0.05 * stated) else None


class _KeepUp:
    """--realtime: merges the batches `_decoded` made while the network was busy into the newest
    one (their packets to copy all kept, in order), counting the frames it drops in `dropped`."""

    def __init__(self):
        self.dropped = 0

    def __call__(self, older: tuple, newer: tuple) -> tuple:
        if newer[1] is None:  # the end: what it copies comes after the older batch's frames
            return older[0] + newer[0], older[1], older[2]
        self.dropped += 0 if older[1] is None else len(older[1])
        return older[0] + newer[0], newer[1], newer[2]


def _transcode(
    events, vin, encoder: _Encoder, batch: int, pin: bool, progress: bool, upscale, rgb: _ToRGB,
    keep_up: _KeepUp | None = None,
) -> None:  # fmt: skip
    """Decode `events` (`_demuxed`) in batches of frames of `vin` (a thread ahead; made RGB by
    `rgb`), `upscale` each batch, hand frames and the packets to copy to `encoder` in order, and
    close it (after a failure without checking: that one is reported). With `keep_up`, the decoder
    reads on as the input comes and only the newest batch waiting is upscaled."""
    from tqdm import tqdm

    busy = encoder.busy
    bar = tqdm(total=vin.frames or None, unit="frame", disable=not progress, file=sys.stderr)
    decoded = _decoded(events, batch, pin, busy, rgb)
    items = _prefetched(decoded, depth=0, merge=keep_up) if keep_up else _prefetched(decoded, 2)
    try:
        with contextlib.closing(items):  # the decoding thread ends before the input is closed
            for copied, x, pts in items:
                frames = None
                if x is not None:
                    with busy("upscale"):
                        frames = upscale(x)
                encoder.put(copied, frames, pts)
                bar.update(0 if x is None else len(x))
    except BaseException:
        encoder.close(check=False)
        raise
    finally:
        bar.close()
    encoder.close()


def upscale_video(
    src: Path | str,
    dst: str | Path | None,
    net: M.ESPCN,
    codec: str = "libx264",
    crf: int = 18,
    preset: str = "veryfast",
    batch: int | None = None,
    amp: torch.dtype | None = None,
    tile: int | None = None,
    progress: bool = False,
    force: bool = False,
    size: tuple[int | None, int | None] | None = None,
    encoders: int = 1,
    segment_s: float = 2.0,
    realtime: bool = False,
) -> dict:
    """Write `dst` (default: <stem>_x<scale>.mp4 beside `src`, .mkv for a .mkv, or in `dst` if that
    is a folder;
    atomically; `-`: Matroska to standard output, as it comes) with every video frame of `src` as
    players show it (progressive, turned, in SDR colours: `_Progressive`, `_how_shown`), upscaled
    (and resized to `size`, see infer.parse_size; for a 4:2:0 codec an odd last column or row
    cropped) and its audio tracks and subtitles copied; `encoders` > 1 encodes segments of
    `segment_s` seconds that many at a time (see _Encoder). `src` is a file or a stream
    (`is_stream`: standard input, a URL), which Ctrl-C ends (`_ctrl_c_ends`). `batch` frames go
    through the network at once; by default 8 for a file and 1 for a stream, which is live (a
    call, a game, a camera): each frame goes on as soon as it is decoded, and the decoder and
    x264/x265 keep none back (slice threads; tune zerolatency), so that it comes out a frame's
    work after it came in, not seconds (bench/stream_latency.py). `realtime`: keep up with a live
    input that comes faster than the network upscales it (a call on a slow machine) by dropping
    the frames that wait while it works, so that the delay stays that of one batch; their times
    are left out of the output (players show the frame before for longer).
    Returns frames, seconds, fps, size, dst, busy: the seconds each stage (decode, upscale, gpu,
    encode) spent working, which tell the one that limits the rest, scaled: how many frames were
    of another size than the first (`_ToRGB`), left_out (`_Encoder`), ended_by_ctrl_c, dropped
    (`realtime`), damaged
    (`_Damage`: packets skipped, frames concealed) and cut_short (`_cut_short`)."""
    import av

    s, device = net.scale, next(net.parameters()).device
    stream = is_stream(src)
    batch = batch or (1 if stream else 8)
    if realtime and not stream:
        raise SrctlError(f"{src}: --realtime keeps up with a live input (a URL, or - for a pipe)")
    src = src if stream else Path(src)
    if str(dst) == STDIO:
        dst = STDIO
    elif dst is None or is_folder(dst):
        if stream:
            raise SrctlError(f"{src}: a stream has no name to give its output: -o names the file")
        # a film's .mkv keeps its SubRip or ASS subtitles, which .mp4 cannot hold
        name = f"{src.stem}_x{s}{'.mkv' if src.suffix.lower() == '.mkv' else '.mp4'}"
        dst = Path(dst) / name if dst else src.with_name(name)
    else:
        dst = Path(dst)
    if dst != STDIO:  # the same refusals as infer: never the input, no clobbering
        check_outputs([] if stream else [src], [dst], force)
    fmt = _output_format(dst, codec)
    tile = tile or (4096 if device.type == "cuda" else TILE)  # a GPU takes whole frames at once
    if device.type == "cuda":  # leave CPU cores to the decoder and encoder (+6% on an H100)
        torch.set_num_threads(min(4, torch.get_num_threads()))
    started, busy, stop, damage = time.perf_counter(), _Busy(), threading.Event(), _Damage()
    keep_up = _KeepUp() if realtime else None
    try:
        with _ctrl_c_ends(stream, stop), _open(src) as inp, _written(dst, fmt) as out:
            vin = inp.streams.video[0]
            vin.thread_type = "SLICE" if stream else "AUTO"  # frame threads hold frames back
            others = [st for st in inp.streams if st.type in ("audio", "subtitle")]
            # upright and in the colours players show (as infer turns a photo by its EXIF
            # orientation): the output has no display matrix, and SDR colours tagged as such
            events = _demuxed(inp, vin, others, stop, damage)
            (w, h), turn, colours, tags, events = _how_shown(events, vin)
            frame = (h * s, w * s) if turn[0] else (w * s, h * s)
            # pixels that are not square (a DVD's 720x480 shown 16:9) stay so, with their aspect
            # ratio in the output; --size is a shown size: of square pixels
            sar = Fraction(vin.sample_aspect_ratio or 1)
            sar = 1 / sar if turn[0] else sar
            if size:
                shown = (round(frame[0] * sar), frame[1])
                frame, sar = target_size(size, *shown, multiple=2), Fraction(1)
            resize = frame if size else None
            if _pix_fmt(codec) == "yuv420p":  # 4:2:0 wants even sides: an odd last column or row
                frame = (frame[0] // 2 * 2, frame[1] // 2 * 2)  # is cropped (resizing blurs all)
                if min(frame) == 0:
                    raise SrctlError(f"{dst}: {codec}'s 4:2:0 needs sides of 2 pixels at least")
            try:
                encoder = _Encoder(
                    out, vin, others, frame, codec, crf, preset, 4 * batch, busy, encoders,
                    segment_s, sar, tags, live=stream,
                )  # fmt: skip
            except ValueError as exc:  # a codec the container cannot hold: which, what to do
                raise SrctlError(f"{dst}: {exc}") from exc
            # yuv420p on a GPU (it halves the bytes copied back); a CPU leaves it to swscale in the
            # encoder's thread: 80 1080p frames/s against PyTorch's 15 (EPYC, video_stages.py)
            yuv = encoder.yuv and device.type == "cuda"
            upscale = partial(
                _upscaled, net, tile=tile, amp=amp, yuv=yuv, size=resize, crop=frame, turn=turn
            )
            rgb, pin = _ToRGB(colours, (w, h)), device.type == "cuda"
            _transcode(events, vin, encoder, batch, pin, progress, upscale, rgb, keep_up)
            if encoder.frames == 0:
                bad = f" ({damage.packets} packets damaged)" if damage.packets else ""
                raise SrctlError(f"{_name(src)}: no video frames decoded{bad}")
            cut_short = None if stream else _cut_short(inp, vin, encoder)
    except av.error.FFmpegError as exc:
        raise SrctlError(f"{_name(src)}: video processing failed ({exc})") from exc
    seconds = time.perf_counter() - started
    size = (encoder.vout.width, encoder.vout.height)
    return {
        "frames": encoder.frames,
        "seconds": seconds,
        "fps": encoder.frames / seconds,
        "size": size,
        "dst": dst,
        "busy": busy.seconds,
        "scaled": rgb.scaled,
        "left_out": encoder.left_out,
        "ended_by_ctrl_c": stop.is_set(),
        "dropped": keep_up.dropped if keep_up else 0,
        "damaged": {"packets": damage.packets, "frames": damage.frames},
        "cut_short": cut_short,
    }
