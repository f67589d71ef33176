"""Image files -> upright pictures; pictures <-> uint8 tensors; the full-range BT.601 (JFIF)
YCbCr that PIL and JPEG use.

One implementation for prepare (training Y), infer and video, so that a frame upscaled by
`srctl video` equals the same frame through `srctl infer`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from srctl.errors import SrctlError

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_TO_YCBCR = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
)
_TO_RGB = torch.linalg.inv(_TO_YCBCR)
_OFFSET = torch.tensor([0.0, 128.0, 128.0])


def _content_and_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """8-bit RGB or L content, and the alpha channel if the image has one.

    16-bit greyscale is scaled to 8 bits; palette, CMYK, 1-bit, LAB... are converted to RGB.
    """
    if img.mode in _SIXTEEN_BIT:
        img = Image.fromarray(
            (np.asarray(img, dtype=np.float64) / 257).clip(0, 255).round().astype(np.uint8)
        )
    elif img.mode == "F":
        img = Image.fromarray(np.asarray(img).clip(0, 255).round().astype(np.uint8))
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    alpha = None
    if "A" in img.getbands() or img.mode in ("RGBa", "La"):
        alpha = img.getchannel(img.getbands()[-1])
        img = img.convert("L" if img.mode in ("LA", "La") else "RGB")
    elif img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    return img, alpha


def to_tensor(img: Image.Image) -> torch.Tensor:
    """Any PIL image -> uint8 [C, H, W]: C = 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA)."""
    content, alpha = _content_and_alpha(img)
    t = torch.from_numpy(np.array(content)).reshape(content.height, content.width, -1)
    if alpha is not None:
        t = torch.cat([t, torch.from_numpy(np.array(alpha))[..., None]], dim=-1)
    return t.permute(2, 0, 1)


def to_image(t: torch.Tensor) -> Image.Image:
    """uint8 [C, H, W] -> PIL image (L, LA, RGB or RGBA)."""
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[t.shape[0]]
    return Image.fromarray(t.permute(1, 2, 0).squeeze(-1).cpu().numpy(), mode)


def _affine(
    x: torch.Tensor, matrix: torch.Tensor, before: torch.Tensor, after: torch.Tensor
) -> torch.Tensor:
    m, b, a = (v.to(x.device) for v in (matrix, before, after))
    return torch.einsum("ij,njhw->nihw", m, x - b[:, None, None]) + a[:, None, None]


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """float [N, 3, H, W] RGB in 0..255 -> YCbCr in 0..255 (not rounded)."""
    return _affine(rgb, _TO_YCBCR, torch.zeros(3), _OFFSET)


def ycbcr_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    return _affine(ycc, _TO_RGB, _OFFSET, torch.zeros(3))


def y_channel(img: Image.Image) -> np.ndarray:
    """The Y the network sees, rounded to uint8 [H, W], of an RGB image."""
    y = rgb_to_ycbcr(to_tensor(img.convert("RGB"))[None].float())[0, 0]
    return y.round().clamp(0, 255).to(torch.uint8).numpy()


# Studio-range BT.601 (Y in 16..235): the SR literature's PSNR channel, and what FFmpeg's swscale
# uses
# for RGB -> yuv420p when nothing else is said. Rows Y, Cb, Cr; times R, G, B in 0..255, over 255.
BT601_STUDIO = ((65.481, 128.553, 24.966), (-37.797, -74.203, 112.0), (112.0, -93.786, -18.214))
_TO_YUV = torch.tensor(BT601_STUDIO) / 255


def rgb_to_yuv420p(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] RGB (H, W even) -> uint8 [N, H*3/2, W]: the Y, U, V planes of yuv420p
    frames, laid out as PyAV's VideoFrame.from_ndarray(format="yuv420p") takes them.
    Chroma: 2x2 means."""
    n, _, h, w = rgb.shape
    yuv = _affine(rgb.float(), _TO_YUV, torch.zeros(3), torch.tensor([16.0, 128.0, 128.0]))
    uv = torch.nn.functional.avg_pool2d(yuv[:, 1:], 2)
    planes = [
        yuv[:, 0].reshape(n, h, w),
        uv[:, 0].reshape(n, h // 4, w),
        uv[:, 1].reshape(n, h // 4, w),
    ]
    return torch.cat(planes, 1).round_().clamp_(0, 255).to(torch.uint8)


def decode_image(source: Path | BinaryIO, name: str, max_pixels: int | None = None) -> Image.Image:
    """The decoded image, turned upright by its EXIF orientation; SrctlError naming `name` if it
    can't be."""
    try:
        with warnings.catch_warnings(), Image.open(source) as img:
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
