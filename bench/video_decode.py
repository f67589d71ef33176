"""What `srctl video`'s decoder does beyond decoding costs, in one run, for the same frames:
- the decode to RGB as 8-bit SDR (BT.709), as 10-bit HDR (a phone's HLG, BT.2020) decoded as
  stored (srctl's old way: grey, washed-out values) and as srctl decodes HDR now (tone- and
  gamut-mapped to BT.709 SDR by swscale, `video._colours`), each through `video._ToRGB`;
- interlaced frames (x264's, top field first) made progressive by bwdif (`video._Progressive`),
  against the 8-bit SDR decode to RGB of the same frames.

Usage: python bench/video_decode.py [WxH ...]   (default 640x360 1280x720; 60 frames of
       video_speed.py's panning photo)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import av
from av.video.reformatter import VideoReformatter
from PIL import Image
from video_speed import PHOTO  # bench/, beside this script

from srctl.video import HLG, _colours, _Progressive, _ToRGB

FRAMES = 60
BT2020 = 9  # AVColorSpace and AVColorPrimaries both


def timed(frames: list, options: dict) -> tuple[float, float]:
    """srctl's decode to RGB: seconds for the first frame (swscale's set-up, once a clip) and
    frames/s of the others."""
    rgb, start = _ToRGB(options, (frames[0].width, frames[0].height)), time.perf_counter()
    rgb(frames[0])
    first, start = time.perf_counter() - start, time.perf_counter()
    for f in frames[1:]:
        rgb(f)
    return first, (len(frames) - 1) / (time.perf_counter() - start)


def interlaced(frames: list) -> list:
    """`frames` encoded interlaced by x264 and decoded: frames flagged so, as a DVD's are."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "interlaced.mkv"
        with av.open(str(path), "w") as out:
            v = out.add_stream("libx264", rate=25)
            v.width, v.height, v.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
            v.options = {"x264-params": "tff=1", "preset": "veryfast"}
            for f in frames:
                out.mux(v.encode(f))
            out.mux(v.encode(None))
        with av.open(str(path)) as inp:
            decoded = list(inp.decode(video=0))
    assert all(f.interlaced_frame for f in decoded)
    return decoded


def progressive_fps(frames: list) -> float:
    progressive, start = _Progressive(), time.perf_counter()
    out = progressive(frames) + progressive(None)
    assert len(out) == len(frames)
    return len(frames) / (time.perf_counter() - start)


def main() -> None:
    for size in sys.argv[1:] or ["640x360", "1280x720"]:
        w, h = map(int, size.split("x"))
        photo = Image.open(PHOTO).convert("RGB").resize((w + 2 * FRAMES, h + FRAMES))
        crops = (photo.crop((2 * i, i, 2 * i + w, i + h)) for i in range(FRAMES))
        rgb = [av.VideoFrame.from_image(crop) for crop in crops]
        sdr = [f.reformat(format="yuv420p", dst_colorspace=1, dst_color_range=1) for f in rgb]
        hlg = dict(dst_colorspace=BT2020, dst_color_trc=HLG, dst_color_primaries=BT2020)
        to_hdr = VideoReformatter()  # one swscale context: its set-up takes seconds
        hdr = [to_hdr.reformat(f, format="yuv420p10le", dst_color_range=1, **hlg) for f in rgb]
        options = _colours(hdr[0])[0]
        assert options, "an HLG frame is tone-mapped"
        runs = {
            "8-bit SDR": timed(sdr, _colours(sdr[0])[0]),
            "10-bit HLG as stored": timed(hdr, {}),
            "10-bit HLG tone-mapped to SDR (srctl)": timed(hdr, options),
        }
        for name, (first, fps) in runs.items():
            print(f"{size} to RGB, {name}: first frame {first:.2f} s, then {fps:.1f} frames/s")
        bwdif = progressive_fps(interlaced(sdr))
        print(
            f"{size} interlaced, made progressive by bwdif (srctl): {bwdif:.1f} frames/s, "
            f"{1000 / bwdif:.2f} ms a frame against {1000 / runs['8-bit SDR'][1]:.2f} ms to RGB"
        )


if __name__ == "__main__":
    main()
