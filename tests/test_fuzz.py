"""Fuzzing the image-loading path: whatever the bytes, open_image returns an image or raises
SrctlError."""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from srctl import model as M
from srctl.errors import SrctlError
from srctl.infer import open_image
from srctl.upscale import upscale_image


def _seed_files() -> list[bytes]:
    out = []
    for fmt, mode in (
        ("PNG", "RGBA"),
        ("JPEG", "RGB"),
        ("BMP", "RGB"),
        ("GIF", "P"),
        ("TIFF", "I;16"),
        ("WEBP", "RGB"),
    ):
        buf = io.BytesIO()
        Image.new(
            mode, (7, 5), color=3 if mode in ("P", "I;16") else (30, 60, 90, 120)[: len(mode)]
        ).save(buf, fmt)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_files()
NET = M.ESPCN(3).eval()


@st.composite
def mutated(draw):
    """A valid small image file of some format, a few bytes overwritten, cut short or extended."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    data = data[: draw(st.integers(0, len(data)))]
    return bytes(data) + draw(st.binary(max_size=32))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.one_of(mutated(), st.binary(max_size=2048)),
    suffix=st.sampled_from([".png", ".jpg", ".gif", ".tif", ""]),
)
def test_image_loading_never_crashes(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        img = open_image(path)
    except SrctlError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)
        return
    if img.width * img.height <= 1 << 16:  # what decodes must also upscale
        out = upscale_image(NET, img)
        assert out.size == (img.width * 3, img.height * 3)
