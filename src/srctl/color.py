"""The full-range BT.601 (JFIF) YCbCr that PIL and JPEG use, and the studio-range one of video,
on uint8 tensors made from pictures (pictures.py).

One implementation for prepare (training Y), infer and video, so that a frame upscaled by
`srctl video` equals the same frame through `srctl infer`.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from srctl.pictures import from_array, to_array

_TO_YCBCR = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
)
_TO_RGB = torch.linalg.inv(_TO_YCBCR)
_OFFSET = torch.tensor([0.0, 128.0, 128.0])


def to_tensor(img: Image.Image) -> torch.Tensor:
    """Any PIL image -> uint8 [C, H, W]: C = 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA)."""
    return torch.from_numpy(to_array(img))


def to_image(t: torch.Tensor) -> Image.Image:
    """uint8 [C, H, W] -> PIL image (L, LA, RGB or RGBA)."""
    return from_array(t.cpu().numpy())


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
