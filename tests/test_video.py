"""`srctl video` on a real small video with an audio track, made here with PyAV."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from srctl import model as M
from srctl.errors import SrctlError
from srctl.pictures import TILE
from srctl.upscale import upscale_image
from srctl.video import HLG, PQ, _upscaled, upscale_video

from conftest import BSDS300, free_port, srctl_cli

RATE = 12


def _photo(name="3096.jpg", width=None):
    photo = Image.open(BSDS300 / "images" / "test" / name).convert("RGB")
    return photo.resize((width, width * photo.height // photo.width)) if width else photo


def _make_clip(
    path, frames=10, size=(48, 32), codec="mpeg4", stream=lambda v: None, frame=lambda f: f,
    photo=None, languages=(None,), subtitles=None,
):  # fmt: skip
    """A panning crop of `photo` (a BSDS300 one by default), `codec` at 12 frames/s (`stream` sets
    more of its video stream: a display matrix, an aspect ratio; `frame` converts each RGB frame),
    with an AAC track per language (440 Hz, 660 Hz, ...) and the SubRip file `subtitles` if any."""
    photo = photo or _photo()
    with av.open(str(path), "w") as out:
        v = out.add_stream(codec, rate=RATE)
        v.width, v.height, v.pix_fmt = *size, "rgb24" if codec == "png" else "yuv420p"
        stream(v)
        tracks = [out.add_stream("aac", rate=16000) for _ in languages]
        for a, language in zip(tracks, languages, strict=True):
            if language:
                a.metadata["language"] = language
        subs = av.open(str(subtitles)) if subtitles else None
        s = out.add_stream_from_template(subs.streams.subtitles[0]) if subs else None
        for i in range(frames):
            crop = photo.crop((i * 4, 0, i * 4 + size[0], size[1]))
            out.mux(v.encode(frame(av.VideoFrame.from_image(crop))))
        out.mux(v.encode(None))
        t = np.arange(16000 * frames // RATE) / 16000
        for k, a in enumerate(tracks):
            samples = (0.3 * np.sin(2 * np.pi * 440 * (1 + k / 2) * t)).astype(np.float32)[None]
            for start in range(0, samples.shape[1], 1024):
                chunk = np.ascontiguousarray(samples[:, start : start + 1024])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate = 16000
                out.mux(a.encode(frame))
            out.mux(a.encode(None))
        if subs:
            for packet in subs.demux():
                if packet.size:
                    packet.stream = s
                    out.mux(packet)
            subs.close()


def _frames(path):
    with av.open(str(path)) as f:
        return [fr.to_image() for fr in f.decode(video=0)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    _make_clip(path)
    return path


def test_frames_equal_infer_audio_copied_rate_kept(clip, tmp_path):
    net = M.ESPCN(3).eval()
    out = tmp_path / "big.mov"
    # lossless codec: frames comparable exactly
    stats = upscale_video(clip, out, net, codec="png", batch=4)
    assert stats["frames"] == 10 and stats["size"] == (144, 96)
    for src, got in zip(_frames(clip), _frames(out), strict=True):
        want = np.asarray(upscale_image(net, src), dtype=int)
        assert np.abs(np.asarray(got, dtype=int) - want).max() <= 1
    with av.open(str(out)) as f, av.open(str(clip)) as g:
        assert f.streams.video[0].average_rate == Fraction(RATE)
        assert f.streams.audio[0].codec_context.name == "aac"
        assert f.streams.audio[0].frames in (0, g.streams.audio[0].frames)  # copied, not re-encoded
        assert sum(p.size for p in f.demux(audio=0)) == sum(p.size for p in g.demux(audio=0))


def test_size_resizes_every_frame_as_infer_does(clip, tmp_path):
    """--size 100x (the width; the height from the aspect ratio, even for 4:2:0): each frame is the
    network's result resized as `srctl infer --size` resizes it."""
    from srctl.color import to_image, to_tensor
    from srctl.upscale import resized, upscale_batch

    net = M.ESPCN.named("contrast", 3).eval()
    out = tmp_path / "sized.mov"
    stats = upscale_video(clip, out, net, codec="png", batch=4, size=(100, None))
    assert stats["size"] == (100, 66)  # 144x96 -> 100 wide, 66.7 -> 66 (even)
    for src, got in zip(_frames(clip), _frames(out), strict=True):
        want = resized(upscale_batch(net, to_tensor(src)[None]), (100, None), multiple=2)
        want = np.asarray(to_image(want[0]), dtype=int)
        assert np.abs(np.asarray(got, dtype=int) - want).max() <= 1


def test_default_h264_and_bad_inputs_through_the_cli(clip, tmp_path, logged_model_store):
    store, run_id = logged_model_store
    # -o a folder (its name ends with /): <stem>_x3.mp4 in it
    res = srctl_cli("video", str(clip), "-o", f"{tmp_path}/o/", "--run-id", run_id, cwd=store)
    assert res.returncode == 0, res.stderr
    assert "10 frames, 144x96" in res.stdout
    with av.open(str(tmp_path / "o" / "clip_x3.mp4")) as f:
        assert f.streams.video[0].codec_context.name == "h264" and f.streams.video[0].width == 144

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is no video")
    res = srctl_cli("video", str(bad), "--run-id", run_id, cwd=store)
    assert res.returncode == 1 and res.stderr.startswith(f"error: {bad}: not a readable video")
    assert len(res.stderr.strip().splitlines()) == 1
    # no output (the input fails before one is opened): test_failure_mid_encode_leaves_no_file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4", "o"]

    res = srctl_cli("video", str(tmp_path), "--run-id", run_id, cwd=store)
    assert res.returncode == 1 and res.stderr == f"error: {tmp_path}: is a folder, not a video\n"

    out = tmp_path / "o2"  # no suffix: no format
    res = srctl_cli("video", str(clip), "-o", str(out), "--run-id", run_id, cwd=store)
    assert res.returncode == 1 and res.stderr.startswith(f"error: {out}: no video format by")
    assert len(res.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4", "o"]


@pytest.mark.parametrize(
    ("name", "codec", "message"),
    [
        ("out", "libx264", "no video format by that name's suffix"),
        ("out.mp5", "libx264", "no video format by that name's suffix"),
        ("out.mp4", "x264", "--codec x264: not a video encoder"),  # no such encoder
        ("out.mp4", "aac", "--codec aac: not a video encoder"),  # an audio one
        ("out.mkv", "png", "'matroska' format does not support 'png' codec: choose another --c"),
        ("out.webm", "libvpx-vp9", r"support 'aac' codec \(the audio, copied as it is\): choose"),
    ],
)
def test_bad_output_format_or_codec_is_an_error_before_any_file(
    clip, tmp_path, name, codec, message
):
    with pytest.raises(SrctlError, match=message):
        upscale_video(clip, tmp_path / name, M.ESPCN(3).eval(), codec=codec)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "turned, shown",
    [
        (90, Image.Transpose.ROTATE_90),
        (-90, Image.Transpose.ROTATE_270),
        (180, Image.Transpose.ROTATE_180),
    ],
)
def test_a_phone_clip_turned_by_its_display_matrix_comes_out_upright(tmp_path, turned, shown):
    """A phone stores a clip filmed upright as landscape frames and a turn in the display matrix,
    which players apply. The output is upright (as infer turns a photo by its EXIF orientation),
    its size and --size are the shown ones, and it has no matrix (it is not turned twice)."""
    src = tmp_path / "phone.mov"
    _make_clip(src, frames=3, codec="png", stream=lambda v: v.set_display_rotation(turned))
    net = M.ESPCN.named("contrast", 3).eval()
    portrait = turned != 180
    stats = upscale_video(src, tmp_path / "up.mov", net, codec="png")
    assert stats["size"] == ((96, 144) if portrait else (144, 96))
    for stored, got in zip(_frames(src), _frames(tmp_path / "up.mov"), strict=True):
        want = np.asarray(upscale_image(net, stored.transpose(shown)), dtype=int)
        assert np.abs(np.asarray(got, dtype=int) - want).max() <= 1
    with av.open(str(tmp_path / "up.mov")) as f:
        assert next(f.decode(video=0)).rotation == 0
    stats = upscale_video(src, tmp_path / "sized.mov", net, codec="png", size=(64, None))
    assert stats["size"] == ((64, 96) if portrait else (64, 42))


def test_pixels_that_are_not_square_keep_their_aspect_ratio(tmp_path):
    """A DVD's or a broadcast's frames are shown wider than they are stored (720x480 at 16:9): the
    output's pixels have the same aspect ratio, in one encoder or in segments; --size is a shown
    size, of square pixels."""

    def anamorphic(v):
        v.codec_context.sample_aspect_ratio = Fraction(32, 27)  # shown 16:9

    src = tmp_path / "dvd.mp4"
    _make_clip(src, frames=6, codec="libx264", stream=anamorphic)
    net = M.ESPCN(3).eval()
    for name, segments in (("one.mp4", 1), ("segments.mp4", 2)):
        stats = upscale_video(src, tmp_path / name, net, encoders=segments, segment_s=0.2)
        with av.open(str(tmp_path / name)) as f:
            assert f.streams.video[0].sample_aspect_ratio == Fraction(32, 27), name
            assert f.streams.video[0].display_aspect_ratio == Fraction(16, 9), name
        assert stats["size"] == (144, 96)
    stats = upscale_video(src, tmp_path / "sized.mp4", net, size=(None, 96))
    assert stats["size"] == (172, 96)  # 144 x 32/27 = 170.7 wide shown: 171, even for 4:2:0
    with av.open(str(tmp_path / "sized.mp4")) as f:
        assert f.streams.video[0].sample_aspect_ratio in (None, 1)


def test_420_output_says_which_colours_it_holds(clip, tmp_path):
    """Its YUV is BT.601 studio range (swscale's and rgb_to_yuv420p's), tagged so: untagged, players
    decode HD sizes as BT.709, and reds and greens shift. In one encoder and in segments."""
    net = M.ESPCN(3).eval()
    for name, segments in (("one.mp4", 1), ("segments.mp4", 2)):
        upscale_video(clip, tmp_path / name, net, encoders=segments, segment_s=0.3)
        with av.open(str(tmp_path / name)) as f:
            frame = next(f.decode(video=0))
        assert (frame.format.name, frame.colorspace, frame.color_range) == ("yuv420p", 6, 1)


@pytest.mark.parametrize("transfer", [HLG, PQ], ids=["hlg", "pq"])
def test_an_hdr_clip_comes_out_in_the_sdr_colours_it_shows(tmp_path, transfer):
    """A phone's HLG clip or an HDR10 one (PQ), 10-bit BT.2020: decoded as stored, its values came
    out grey and washed out (the output 3.7 and 7.8 levels off on average here); now they are
    tone-mapped to BT.709 SDR, which the network's training photos are (0.35 and 0.31 off), and
    tagged so (in segments too)."""

    def hdr(v):
        v.pix_fmt, v.options = "yuv420p10le", {"qp": "0"}  # lossless
        ctx = v.codec_context
        ctx.colorspace, ctx.color_range, ctx.color_trc, ctx.color_primaries = 9, 1, transfer, 9

    def to_hdr(frame):  # the SDR photo as an HDR camera holds it
        return frame.reformat(
            format="yuv420p10le", dst_colorspace=9, dst_color_range=1, dst_color_trc=transfer,
            dst_color_primaries=9,
        )  # fmt: skip

    src = tmp_path / "hdr.mov"
    _make_clip(src, frames=2, codec="libx264", stream=hdr, frame=to_hdr)
    net = M.ESPCN(3).eval()
    upscale_video(src, tmp_path / "up.mov", net, codec="png")
    want = np.asarray(upscale_image(net, _photo().crop((0, 0, 48, 32))), dtype=int)
    got = np.asarray(_frames(tmp_path / "up.mov")[0], dtype=int)
    assert np.abs(got - want).mean() < 1
    upscale_video(src, tmp_path / "up.mp4", net, encoders=2, segment_s=0.1)
    with av.open(str(tmp_path / "up.mp4")) as f:
        frame = next(f.decode(video=0))
    assert (frame.color_primaries, frame.color_trc) == (1, 1)  # BT.709 SDR


def test_an_untagged_hd_clip_is_decoded_as_players_do(tmp_path):
    """An HD camera's YUV is BT.709; untagged, players take BT.709 for HD sizes, and so does srctl
    now: swscale took BT.601, and the output was 3.4 levels off on average here (now 0.45)."""
    photo, src = _photo("147091.jpg", width=1290), tmp_path / "hd.mov"
    _make_clip(
        src, frames=2, size=(1280, 8), codec="libx264", photo=photo,
        stream=lambda v: setattr(v, "options", {"qp": "0"}),  # lossless, no colour tags
        frame=lambda f: f.reformat(format="yuv420p", dst_colorspace=1, dst_color_range=1),
    )  # fmt: skip
    net = M.ESPCN(3).eval()
    upscale_video(src, tmp_path / "up.mov", net, codec="png")
    want = np.asarray(upscale_image(net, photo.crop((0, 0, 1280, 8))), dtype=int)
    got = np.asarray(_frames(tmp_path / "up.mov")[0], dtype=int)
    assert np.abs(got - want).mean() < 1


def test_frames_of_another_size_are_scaled_to_the_first_ones(tmp_path):
    """A video call's recording changes resolution as the network allows (clips joined do too):
    frames of another size are scaled to the first frame's before the network (a batch of them
    failed with a traceback), and the CLI says how many."""
    src, photo, sizes = tmp_path / "call.ts", _photo(), [(48, 32)] * 3 + [(72, 48)] * 4
    with av.open(str(src), "w") as out:  # MPEG-TS: each encoder's H.264 headers in the stream
        stream = out.add_stream("libx264", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = *sizes[0], "yuv420p"
        for i, size in enumerate(sizes):
            if i == 0 or size != sizes[i - 1]:
                ctx = av.CodecContext.create("libx264", "w")
                ctx.width, ctx.height, ctx.pix_fmt = *size, "yuv420p"
                ctx.time_base, ctx.options = Fraction(1, RATE), {"qp": "0"}  # lossless
            frame = av.VideoFrame.from_image(photo.crop((0, 0, 96, 64)).resize(size))
            frame.pts = i
            last = i + 1 == len(sizes) or sizes[i + 1] != size
            for packet in ctx.encode(frame) + (ctx.encode(None) if last else []):
                packet.stream = stream
                out.mux(packet)
    model = tmp_path / "model"
    net = M.ESPCN(3).eval()
    M.save(net, model)
    opts = ["-o", "up.mov", "--codec", "png", "--model-dir", str(model)]  # png: lossless RGB
    res = srctl_cli("video", str(src), *opts, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "(7 frames; 4 of another size scaled to the first's, 144x96," in res.stdout
    stored, got = _frames(src), _frames(tmp_path / "up.mov")
    assert [f.size for f in got] == [(144, 96)] * 7
    for frame, up in zip(stored, got, strict=True):
        want = np.asarray(upscale_image(net, frame.resize((48, 32), Image.BICUBIC)), dtype=int)
        diff = np.abs(np.asarray(up, dtype=int) - want)
        # swscale's bicubic is not PIL's: 0.59 levels apart on average here
        assert diff.max() <= 1 if frame.size == (48, 32) else diff.mean() < 1.5


def test_an_interlaced_clip_comes_out_without_combs(tmp_path):
    """A DVD's or a camcorder's frames hold two fields, half a frame's time apart: upscaled as
    stored, every moving edge came out combed, 3 times as wide. Its frames are made progressive
    (FFmpeg's bwdif) first, one per frame, at the same times. The scene: a row of a photo
    repeated down the frame, panning, so that its frames' rows are all alike but for combs; the
    network: bicubic (its residual zeroed), which keeps them alike."""
    row = np.asarray(_photo("86016.jpg"))[100]
    scene = lambda t: np.repeat(row[None, 4 * t : 4 * t + 48], 32, axis=0)  # noqa: E731
    src = tmp_path / "dv.mkv"
    with av.open(str(src), "w") as out:
        v = out.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 48, 32, "yuv420p"
        v.options = {"x264-params": "tff=1", "qp": "0"}  # interlaced, top field first; lossless
        for i in range(8):
            woven = scene(2 * i)
            woven[1::2] = scene(2 * i + 1)[1::2]  # the bottom field, half a frame later
            out.mux(v.encode(av.VideoFrame.from_ndarray(woven, format="rgb24")))
        out.mux(v.encode(None))
    net = M.ESPCN(3, residual=True).eval()
    with torch.no_grad():
        net.body[-2].weight.zero_()
        net.body[-2].bias.zero_()
    upscale_video(src, tmp_path / "up.mov", net, codec="png")
    combs = lambda im: np.abs(np.diff(np.asarray(im, dtype=int)[6:-6], axis=0)).mean()  # noqa: E731
    stored, got = _frames(src), _frames(tmp_path / "up.mov")
    assert min(combs(upscale_image(net, im)) for im in stored) > 7  # as stored: 7.4-10.9
    assert max(combs(im) for im in got) < 1  # 0.04-0.1; 0.76 for the last, with no next frame
    times = lambda path: [f.time for f in av.open(str(path)).decode(video=0)]  # noqa: E731
    assert times(tmp_path / "up.mov") == pytest.approx(times(src))


def test_every_audio_track_and_the_subtitles_are_copied(tmp_path):
    """A film's rip holds audio tracks in several languages and subtitles: all are copied, packet
    for packet, with their languages (only the first audio track was, and no subtitles), into a
    .mkv by default for a .mkv. A container that cannot hold the subtitles (mp4 and SubRip) leaves
    them out: the line says so."""
    srt = tmp_path / "film.srt"
    srt.write_text(
        "1\n00:00:00,100 --> 00:00:00,400\nHello\n\n2\n00:00:00,500 --> 00:00:00,700\nBye\n"
    )
    src = tmp_path / "film.mkv"
    _make_clip(src, codec="libx264", languages=("eng", "fra"), subtitles=srt)
    model = tmp_path / "model"
    M.save(M.ESPCN(3).eval(), model)
    res = srctl_cli("video", str(src), "--model-dir", str(model), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "left out" not in res.stdout  # the default for a .mkv: <stem>_x3.mkv

    def tracks(path):  # each stream's (kind, codec, language), the others' packets
        with av.open(str(path)) as f:
            kinds = [(s.type, s.codec_context.name, s.metadata.get("language")) for s in f.streams]
            packets: list = [[] for _ in f.streams]
            for p in f.demux():
                if p.size:
                    packets[p.stream.index].append(bytes(p))
        return kinds, packets[1:]

    (kinds, packets), (got_kinds, got_packets) = tracks(src), tracks(tmp_path / "film_x3.mkv")
    assert kinds[1:] == [
        ("audio", "aac", "eng"),
        ("audio", "aac", "fra"),
        ("subtitle", "srt", None),
    ]
    assert packets[2] == [b"Hello", b"Bye"] and len(packets[0]) == len(packets[1]) > 5
    assert got_kinds[1:] == kinds[1:] and got_packets == packets
    res = srctl_cli("video", str(src), "-o", "up.mp4", "--model-dir", str(model), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "; left out, as .mp4 cannot hold it: srt subtitle)" in res.stdout
    assert [k[:2] for k in tracks(tmp_path / "up.mp4")[0]] == [k[:2] for k in kinds[:3]]


def test_a_stream_from_a_url_or_a_pipe_and_to_a_player(tmp_path, serve):
    """A camera's or a call's stream comes by URL (here HTTP on 127.0.0.1) or through a pipe
    (`-`), and `-o -` pipes Matroska on to a player: the same frames as from a file (lossless
    FFV1: a stream's x264 is tuned for latency, a file's for size)."""
    src = tmp_path / "call.mkv"
    _make_clip(src, codec="libx264")
    model = tmp_path / "model"
    M.save(M.ESPCN(3).eval(), model)
    opts = ["--model-dir", str(model), "--codec", "ffv1"]
    res = srctl_cli("video", str(src), "-o", "file.mkv", *opts, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = srctl_cli("video", serve("call.mkv"), "-o", "url.mkv", *opts, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    with src.open("rb") as stdin:
        piped = subprocess.run(
            [sys.executable, "-m", "srctl.cli", "video", "-", "-o", "-", *opts],
            stdin=stdin,
            capture_output=True,
            cwd=tmp_path,
        )
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr.decode().splitlines()[-1].startswith("- -> - (10 frames, 144x96")
    (tmp_path / "piped.mkv").write_bytes(piped.stdout)  # the video alone
    want = [np.asarray(f) for f in _frames(tmp_path / "file.mkv")]
    for name in ("url.mkv", "piped.mkv"):
        got = [np.asarray(f) for f in _frames(tmp_path / name)]
        assert len(got) == 10 and all(map(np.array_equal, got, want)), name
        with av.open(str(tmp_path / name)) as f:
            assert [s.type for s in f.streams] == ["video", "audio"]

    url = serve("call.mkv")
    res = srctl_cli("video", url, *opts, cwd=tmp_path)
    assert res.returncode == 1
    assert (
        res.stderr == f"error: {url}: a stream has no name to give its output: -o names the file\n"
    )
    url = f"http://127.0.0.1:{free_port()}/call.mkv"  # nothing listens there
    res = srctl_cli("video", url, "-o", "none.mkv", *opts, cwd=tmp_path)
    assert res.returncode == 1 and res.stderr.startswith(f"error: {url}: not a readable video (")
    assert not (tmp_path / "none.mkv").exists()


def test_a_live_streams_frames_come_out_while_it_comes_in(tmp_path):
    """A call sends its frames as they happen: each comes out upscaled (Matroska on standard
    output, to a player) while the stream is still open, not once a batch of 8, x264's lookahead
    and a 32 KB Matroska cluster have filled (bench/stream_latency.py measures the latency)."""
    model = tmp_path / "model"
    M.save(M.ESPCN(3).eval(), model)
    proc = _start_video(
        ["-", "-o", "-", "--model-dir", str(model)], tmp_path, stdin=subprocess.PIPE, bufsize=0
    )
    got: list = []

    def read() -> None:
        with av.open(proc.stdout, format="matroska", buffer_size=1024) as out:
            got.extend(p for p in out.demux(video=0) if p.size)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent = 24
    with av.open(proc.stdin, "w", format="mpegts", container_options={"flush_packets": "1"}) as f:
        v = f.add_stream("libx264", rate=RATE)
        v.width, v.height, v.pix_fmt = 48, 32, "yuv420p"
        v.options = {"tune": "zerolatency"}  # as a call's sender: nothing held back
        for i in range(sent):
            f.mux(v.encode(av.VideoFrame.from_image(_photo().crop((i, 0, i + 48, 32)))))
        # the stream stays open: the frames sent must come out now (all but the last few:
        # MPEG-TS's H.264 parser waits for the next frame's start, a cluster for the next packet)
        deadline = time.monotonic() + 120
        while len(got) < sent - 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(got) >= sent - 4, f"{len(got)} of {sent} frames out while the stream is open"
        f.mux(v.encode(None))
    proc.stdin.close()
    reader.join(60)
    assert proc.wait(60) == 0, proc.stderr.read().decode()
    assert len(got) == sent


def test_realtime_drops_the_frames_that_wait_to_keep_up(tmp_path):
    """A live input that comes faster than this machine upscales (here 30 frames of 320x240 at
    once): with --realtime the frames that came while the network worked are dropped, and counted,
    instead of waiting (a call's delay grew by the second); every frame is one or the other."""
    model = tmp_path / "model"
    M.save(M.ESPCN(3).eval(), model)
    src = tmp_path / "call.mkv"
    _make_clip(src, frames=30, size=(320, 240), codec="libx264")
    args = ["-", "-o", "out.mkv", "--model-dir", str(model), "--realtime"]
    with src.open("rb") as stdin:
        proc = _start_video(args, tmp_path, stdin=stdin)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    kept = len(_frames(tmp_path / "out.mkv"))
    dropped = int(re.search(r"; (\d+) dropped to keep up\)", out.decode()).group(1))
    assert kept >= 1 and dropped >= 1 and kept + dropped == 30
    res = srctl_cli("video", str(src), "--realtime", "--model-dir", str(model), cwd=tmp_path)
    assert res.returncode == 1 and "--realtime keeps up with a live input" in res.stderr


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """50 s (600 frames, 480 KB) of 48x32 with audio, and a model: longer than any test waits."""
    folder = tmp_path_factory.mktemp("long")
    _make_clip(folder / "live.mkv", frames=600, codec="libx264")
    M.save(M.ESPCN(3).eval(), folder / "model")
    return folder / "live.mkv", folder / "model"


def _start_video(args, cwd, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "srctl.cli", "video", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # started from a background job, the child would inherit SIGINT as ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kw,
    )


def _when_writing(proc, folder) -> None:
    """Once `proc` writes its output (under its temporary name) in the empty `folder`."""
    deadline = time.monotonic() + 120
    while not any(folder.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)


def test_ctrl_c_ends_a_stream_and_keeps_what_came(long_clip, tmp_path):
    """A live stream has no end of its own: Ctrl-C ends the input there, and what came is upscaled
    and written, a complete file."""
    src, model = long_clip
    proc = _start_video(
        ["-", "-o", "kept.mkv", "--model-dir", str(model)], tmp_path, stdin=subprocess.PIPE
    )
    data = src.read_bytes()
    # the first half: it returns once srctl has read all but a pipe's buffer (64 KB) of it
    proc.stdin.write(data[: len(data) // 2])
    proc.stdin.flush()
    _when_writing(proc, tmp_path)
    proc.send_signal(signal.SIGINT)  # the camera still sends: the second half comes after
    out, err = proc.communicate(data[len(data) // 2 :], timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip().endswith("; the input ended by Ctrl-C)")
    assert [p.name for p in tmp_path.iterdir()] == ["kept.mkv"]
    frames = _frames(tmp_path / "kept.mkv")
    assert 5 < len(frames) < 600 and frames[0].size == (144, 96)
    with av.open(str(tmp_path / "kept.mkv")) as f:
        assert [s.type for s in f.streams] == ["video", "audio"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_file_stopped_halfway_leaves_nothing(long_clip, tmp_path, sig):
    """A file's Ctrl-C, or `kill`'s SIGTERM, stops it and removes the half-written output (SIGTERM
    left it, under its temporary name): the command can be run again as it was."""
    src, model = long_clip
    proc = _start_video([str(src), "-o", "up.mkv", "--model-dir", str(model)], tmp_path)
    _when_writing(proc, tmp_path)
    proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == 130 and "Traceback" not in err, err  # (typer: 130, as Ctrl-C)
    assert list(tmp_path.iterdir()) == []


def test_a_size_too_small_for_420_is_an_error(clip, tmp_path):
    with pytest.raises(SrctlError, match="libx264's 4:2:0 needs sides of 2 pixels at least"):
        upscale_video(clip, tmp_path / "thin.mp4", M.ESPCN(3).eval(), size=(None, 1))
    assert list(tmp_path.iterdir()) == []


def test_variable_frame_rate_and_a_late_start_keep_their_times(tmp_path):
    """A phone's clip: frames 40 to 160 ms apart, the first at 0.5 s. Each output frame is shown
    when its source frame was (not at frame count / average rate), so the audio stays in step."""
    photo = Image.open(BSDS300 / "images" / "test" / "3096.jpg").convert("RGB")
    gaps = [40, 80, 40, 160, 40, 40] * 4
    times = [500 + sum(gaps[:k]) for k in range(20)]  # ms
    src = tmp_path / "phone.mkv"
    with av.open(str(src), "w") as out:
        v = out.add_stream("mpeg4", rate=RATE)
        v.width, v.height, v.pix_fmt = 48, 32, "yuv420p"
        v.codec_context.time_base = Fraction(1, 1000)
        for i, ms in enumerate(times):
            frame = av.VideoFrame.from_image(photo.crop((i * 4, 0, i * 4 + 48, 32)))
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            out.mux(v.encode(frame))
        out.mux(v.encode(None))

    def shown(path):
        with av.open(str(path)) as f:
            return [round(fr.time * 1000) for fr in f.decode(video=0)]

    assert shown(src) == times
    net = M.ESPCN(3).eval()
    for name, codec in (("x3.mp4", "libx264"), ("x3.mov", "png")):
        upscale_video(src, tmp_path / name, net, codec=codec, batch=4)
        assert shown(tmp_path / name) == times, name
    # segments of 4 frames, encoded apart: x264 delays each by its own gaps, yet the decoding times
    # must increase and stay within the showing times
    upscale_video(src, tmp_path / "seg.mp4", net, batch=4, encoders=2, segment_s=0.3)
    assert shown(tmp_path / "seg.mp4") == times
    # an encoder that may refuse the source's time base (mpeg4 past 1/65535) gets 1/rate: every
    # frame, in order, from the same late start; frames closer than 1/rate move to the next tick
    upscale_video(src, tmp_path / "m4.mp4", net, codec="mpeg4", batch=4)
    got = shown(tmp_path / "m4.mp4")
    assert len(got) == len(times) and got == sorted(set(got)) and got[0] == times[0]


def test_odd_size_cropped_even_for_420_kept_for_rgb(tmp_path):
    """33x23 at x3 is 99x69, which x264's yuv420p (chroma for 2x2 pixels) refuses: the default
    codec gets 98x68, the network's result without its last column and row; png (rgb24) keeps
    99x69."""
    odd = tmp_path / "odd.mp4"
    _make_clip(odd, size=(33, 23))
    net = M.ESPCN.named("contrast", 3).eval()
    stats = upscale_video(odd, tmp_path / "even.mp4", net)
    assert stats["frames"] == 10 and stats["size"] == (98, 68)
    for src, got in zip(_frames(odd), _frames(tmp_path / "even.mp4"), strict=True):
        want = np.asarray(upscale_image(net, src).crop((0, 0, 98, 68)), dtype=int)
        assert np.abs(np.asarray(got, dtype=int) - want).mean() < 3  # x264 at crf 18
    assert upscale_video(odd, tmp_path / "odd.mov", net, codec="png")["size"] == (99, 69)


def test_a_damaged_clip_is_upscaled_as_far_as_it_decodes(clip, tmp_path, logged_model_store):
    """Bytes overwritten in the frames: the packets the decoder refuses are skipped and counted,
    and the rest upscaled, as players and ffmpeg go on (one bad packet used to lose the whole
    video). A tag that is not UTF-8 is no traceback."""
    data = clip.read_bytes()
    end = data.rindex(b"moov") - 4  # the frames come first, then their index: keep the index
    bad = tmp_path / "damaged.mp4"
    bad.write_bytes(data[: end // 2] + b"\xff" * (end - end // 2) + data[end:])
    decoded = []
    with pytest.raises(av.error.InvalidDataError), av.open(str(bad)) as f:
        decoded.extend(f.decode(video=0))
    assert 4 <= len(decoded) < 10

    store, run_id = logged_model_store
    out = tmp_path / "o.mp4"
    res = srctl_cli("video", bad, "-o", out, "--batch", "2", "--run-id", run_id, cwd=store)
    assert res.returncode == 0, res.stderr
    assert f"warning: {bad} is damaged: video packets skipped (could not be decoded): " in (
        res.stderr
    )
    with av.open(str(out)) as f:
        assert len(decoded) <= len(list(f.decode(video=0))) < 10

    tagged = tmp_path / "tagged.mkv"  # a title of bytes that are not UTF-8, as damage leaves
    _make_clip(tagged, stream=lambda v: v.metadata.update(title="TITLE-TAG"))
    tagged.write_bytes(tagged.read_bytes().replace(b"TITLE-TAG", b"\xcf" * 9))
    res = srctl_cli("video", str(tagged), "--run-id", run_id, cwd=store)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "tagged_x3.mkv").is_file()


def test_a_file_cut_short_says_so(tmp_path):
    """A Matroska file cut at half its bytes (a download that stopped) still says in its header
    how long it was: its half is upscaled and the output says where it ended."""
    whole, cut = tmp_path / "whole.mkv", tmp_path / "cut.mkv"
    _make_clip(whole, frames=48, codec="libx264")  # 4 s
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    net = M.ESPCN(3).eval()
    stats = upscale_video(whole, tmp_path / "whole.mp4", net)
    assert stats["frames"] == 48 and stats["cut_short"] is None
    assert stats["damaged"] == {"packets": 0, "frames": 0}
    stats = upscale_video(cut, tmp_path / "cut.mp4", net)
    ended, stated = stats["cut_short"]
    assert 4 < stats["frames"] < 40 and stated == pytest.approx(4, abs=0.2)  # (with its sound)
    assert stats["frames"] / RATE <= ended < 3  # (its last frames may not have come whole)


def test_segments_encoded_at_once_are_joined_in_order(clip, tmp_path):
    """--encoders 3 on segments of 3 frames (0.25 s at 12 frames/s): 4 segments, each from its own
    encoder and starting on a keyframe, joined in order: lossless (png) frames still equal `srctl
    infer`'s with the audio copied; x264 frames of a moving square come in their order."""
    net = M.ESPCN(3).eval()
    png = tmp_path / "png.mov"
    stats = upscale_video(clip, png, net, codec="png", batch=4, encoders=3, segment_s=0.25)
    assert stats["frames"] == 10
    for src, got in zip(_frames(clip), _frames(png), strict=True):
        want = np.asarray(upscale_image(net, src), dtype=int)
        assert np.abs(np.asarray(got, dtype=int) - want).max() <= 1
    with av.open(str(png)) as f, av.open(str(clip)) as g:
        assert sum(p.size for p in f.demux(audio=0)) == sum(p.size for p in g.demux(audio=0))

    moving = tmp_path / "moving.mp4"  # a bright square 4 pixels further right in each frame
    with av.open(str(moving), "w") as out:
        v = out.add_stream("mpeg4", rate=RATE)
        v.width, v.height, v.pix_fmt = 48, 32, "yuv420p"
        for i in range(10):
            a = np.full((32, 48, 3), 40, np.uint8)
            a[8:24, 4 * i : 4 * i + 8] = 220
            out.mux(v.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        out.mux(v.encode(None))
    one, split = tmp_path / "one.mp4", tmp_path / "split.mp4"
    upscale_video(moving, one, net, batch=4)
    upscale_video(moving, split, net, batch=4, encoders=3, segment_s=0.25)
    a = [np.asarray(f, dtype=float) for f in _frames(one)]
    b = [np.asarray(f, dtype=float) for f in _frames(split)]
    assert len(b) == 10
    for i, frame in enumerate(b):  # each nearest to the same frame of one encoder's output
        assert int(np.argmin([np.abs(frame - other).mean() for other in a])) == i
    with av.open(str(split)) as f:
        keys = [p.is_keyframe for p in f.demux(video=0) if p.size]
        assert [i for i, k in enumerate(keys) if k] == [0, 3, 6, 9]
        assert f.streams.video[0].average_rate == Fraction(RATE)


def test_yuv420p_made_on_a_gpu_equals_swscales_within_a_level():
    """A GPU hands the encoder yuv420p frames made by color.rgb_to_yuv420p; a CPU hands it RGB,
    which swscale converts (faster there). The two agree within a level of 255."""
    photo = Image.open(BSDS300 / "images" / "test" / "3096.jpg").convert("RGB")
    frames = torch.from_numpy(
        np.stack([np.asarray(photo.crop((i, 0, i + 48, 32))) for i in (0, 9)])
    )
    net, crop = M.ESPCN.named("contrast", 3).eval(), (144, 96)
    rgb, fmt, _ = _upscaled(net, frames, TILE, None, yuv=False, size=None, crop=crop)
    yuv, yuv_fmt, _ = _upscaled(net, frames, TILE, None, yuv=True, size=None, crop=crop)
    assert (fmt, yuv_fmt) == ("rgb24", "yuv420p") and yuv.shape == (2, 96 * 3 // 2, 144)
    for got, picture in zip(yuv.numpy(), rgb.numpy(), strict=True):
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        assert np.abs(got.astype(int) - frame.to_ndarray().astype(int)).max() <= 1
