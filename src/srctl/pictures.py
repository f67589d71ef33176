"""Image files -> upright pictures -> uint8 arrays [C, H, W] and back, without PyTorch (so that
the ONNX Runtime path of `srctl infer` starts without importing it); the tiles that bound memory.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from srctl.errors import SrctlError

TILE = 512  # LR pixels per tile side: memory stays bounded whatever the image size
# what a folder of pictures is scanned for (infer, prepare's extra_train, benchmark sets): raster
# picture formats, those this Pillow opens (not all it knows: .mpg, .eps, .h5, .ico are no photos)
_PICTURES = (
    ".avif .bmp .dib .gif .j2k .jp2 .jpe .jpeg .jpg .jfif .pbm .pgm .png .pnm .ppm .tga .tif .tiff"
    " .webp"
)
# iPhones' photos (HEIF/HEIC): Pillow opens them through pillow-heif (`_with_heif`)
HEIF_SUFFIXES = {".heic", ".heif", ".hif"}
IMAGE_SUFFIXES = {
    ext
    for ext, fmt in Image.registered_extensions().items()
    if fmt in Image.OPEN and ext in _PICTURES.split()
} | HEIF_SUFFIXES
_DEEP_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def content_and_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """8-bit RGB or L content, and the alpha channel if the image has one.

    16- and 32-bit greyscale are scaled to 8 bits, 1-bit is greyscale; palette, CMYK, LAB... are
    converted to RGB.
    """
    if img.mode in _DEEP_GREY:
        # mode I is 32-bit, but Pillow opens 16-bit PGMs as I: only a TIFF says it has 32 bits
        top = 2**31 - 1 if img.mode == "I" and img.info.get("bits") == 32 else 2**16 - 1
        img = Image.fromarray(
            (np.asarray(img, dtype=np.float64) * (255 / top)).clip(0, 255).round().astype(np.uint8)
        )
    elif img.mode == "F":
        img = Image.fromarray(np.asarray(img).clip(0, 255).round().astype(np.uint8))
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("1", "La"):  # (Pillow converts La, premultiplied, to LA only)
        img = img.convert("L" if img.mode == "1" else "LA")
    alpha = None
    if img.getbands()[-1] in ("A", "a"):  # RGBA, LA, RGBa; not LAB, whose "A" is a colour
        alpha = img.getchannel(img.getbands()[-1])
        img = img.convert("L" if img.mode == "LA" else "RGB")
    elif img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    return img, alpha


def rgb(img: Image.Image) -> Image.Image:
    """The 8-bit RGB picture of any image (16-bit greyscale scaled, not clipped white; alpha
    dropped)."""
    return content_and_alpha(img)[0].convert("RGB")


def icc_profile(img: Image.Image, channels: int) -> bytes | None:
    """The image's ICC profile if it describes the colours of its upscale (`channels` of
    to_array): an RGB one for RGB(A), a grey one for L(A). A CMYK photo's profile does not fit the
    RGB picture made of it, and would make viewers show wrong colours."""
    icc = img.info.get("icc_profile")
    if not icc:
        return None
    try:
        from PIL import ImageCms
    except ImportError:  # a Pillow built without littlecms: no way to tell, keep it
        return icc
    try:
        space = ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space.strip()
    except (OSError, ImageCms.PyCMSError):
        return None  # unreadable: better none than a broken one
    return icc if space == ("GRAY" if channels <= 2 else "RGB") else None


def to_array(img: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 [C, H, W]: C = 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA)."""
    content, alpha = content_and_alpha(img)
    a = np.array(content).reshape(content.height, content.width, -1)
    if alpha is not None:
        a = np.concatenate([a, np.array(alpha)[..., None]], axis=-1)
    return a.transpose(2, 0, 1)


def from_array(a: np.ndarray) -> Image.Image:
    """uint8 [C, H, W] -> PIL image (L, LA, RGB or RGBA)."""
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[a.shape[0]]
    hwc = a.transpose(1, 2, 0)
    return Image.fromarray(np.ascontiguousarray(hwc[..., 0] if mode == "L" else hwc), mode)


def target_size(size, width: int, height: int, multiple: int = 1) -> tuple[int, int]:
    """The (width, height) that `size` (from parse_size) asks of a `width` x `height` picture; a
    side computed from the aspect ratio is rounded to a `multiple` (2 for 4:2:0 video)."""
    w, h = size
    fit = lambda v: max(multiple, round(v / multiple) * multiple)  # noqa: E731
    if w and h:
        return w, h
    return (w, fit(height * w / width)) if w else (fit(width * h / height), h)


def tiled(x, out, scale: int, tile: int, halo: int, run, progress: bool = False):
    """Fill `out` (uint8 [N, C, h*s, w*s]) with `run` (uint8 [N, C, h, w] -> its upscale) tile by
    tile, for numpy arrays and torch tensors alike. Each tile is read grown by `halo` (the
    receptive radius), so the result equals the untiled one, and memory stays bounded."""
    s, (h, w) = scale, x.shape[-2:]
    corners = [(y0, x0) for y0 in range(0, h, tile) for x0 in range(0, w, tile)]
    if progress and len(corners) > 1:  # a big image: show its tiles
        from tqdm import tqdm

        corners = tqdm(corners, unit="tile", leave=False, file=sys.stderr)
    for y0, x0 in corners:
        y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
        a0, b0, a1, b1 = max(y0 - halo, 0), max(x0 - halo, 0), min(y1 + halo, h), min(x1 + halo, w)
        r = run(x[:, :, a0:a1, b0:b1])
        out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = r[
            :, :, (y0 - a0) * s : (y1 - a0) * s, (x0 - b0) * s : (x1 - b0) * s
        ]
    return out


def _with_heif() -> bool:
    """Whether pillow-heif's HEIF opener was newly registered with Pillow: it is imported only
    for a picture Pillow alone cannot identify (76 ms of imports that other pictures skip)."""
    import pillow_heif

    known = "HEIF" in Image.OPEN
    pillow_heif.register_heif_opener()
    return not known


def _open(source: Path | BinaryIO) -> Image.Image:
    """Image.open, and again with HEIF known when Pillow alone could not identify `source`."""
    try:
        return Image.open(source)
    except UnidentifiedImageError:
        if not _with_heif():
            raise
        if hasattr(source, "seek"):  # a file object: from its start again
            source.seek(0)
        return Image.open(source)


def decode_image(source: Path | BinaryIO, name: str, max_pixels: int | None = None) -> Image.Image:
    """The decoded image (HEIF's too), turned upright by its EXIF orientation; SrctlError naming
    `name` if it can't be."""
    try:
        with warnings.catch_warnings(), _open(source) as img:
            # past MAX_IMAGE_PIXELS Pillow only warns (a 12000x8000 photo does); past twice that it
            # refuses
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if max_pixels and img.width * img.height > max_pixels:
                raise SrctlError(
                    f"{name}: {img.width}x{img.height} is over the limit of {max_pixels} pixels"
                )
            img.load()
            upright = ImageOps.exif_transpose(img)
            upright.info.setdefault("icc_profile", img.info.get("icc_profile"))
            if hasattr(img, "tag_v2"):  # a TIFF's bits per sample, which the upright copy loses
                upright.info["bits"] = max(img.tag_v2.get(258, (8,)))
            return upright
    except SrctlError:
        raise
    except Image.DecompressionBombError as exc:
        raise SrctlError(f"{name}: too many pixels to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise SrctlError(f"{name}: not an image (unknown or empty file)") from exc
    except (
        Exception
    ) as exc:  # a decoder fed hostile bytes can raise anything: all of it means 'bad image'
        raise SrctlError(
            f"{name}: damaged or unreadable image ({type(exc).__name__}: {exc})"
        ) from exc
