"""The upscale itself, in PyTorch, in YCbCr: the network upscales Y, Cb and Cr (and alpha) go
bicubic; in tiles, so that memory stays bounded; resized to a size asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from srctl import model as M
from srctl.color import rgb_to_ycbcr, to_image, to_tensor, ycbcr_to_rgb
from srctl.device import pick_device, precision
from srctl.pictures import TILE, target_size, tiled


def receptive_radius(net: M.ESPCN) -> int:
    """How far (in LR pixels) an output pixel sees: the overlap that makes tiles seamless."""
    return sum(m.kernel_size[0] // 2 for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def upscale_float(
    net: M.ESPCN, x: torch.Tensor, amp: torch.dtype | None = None, bicubic=M.bicubic
) -> torch.Tensor:
    """float [N, C, h, w] in 0..255 on the net's device -> float [N, C, h*s, w*s]. The ONNX
    graph of runtime.py is this function exported (with `bicubic` as a convolution)."""
    s, c = net.scale, x.shape[1]
    ycc = rgb_to_ycbcr(x[:, :3]) if c >= 3 else x[:, :1]
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        y = net((ycc[:, :1] / 255).contiguous(memory_format=torch.channels_last), bicubic)
    parts = [y.float().clamp(0, 1) * 255]
    if c >= 3:
        parts = [ycbcr_to_rgb(torch.cat([parts[0], bicubic(ycc[:, 1:], s)], 1))]
    if c in (2, 4):  # alpha
        parts.append(bicubic(x[:, -1:], s))
    return torch.cat(parts, 1)


@torch.inference_mode()
def upscale_batch(
    net: M.ESPCN,
    x: torch.Tensor,
    tile: int = TILE,
    amp: torch.dtype | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """uint8 [N, C, h, w] (C as in to_tensor) -> uint8 [N, C, h*s, w*s], in tiles of `tile` LR
    pixels.

    Colour goes to YCbCr: the network upscales Y, Cb, Cr and alpha are upscaled bicubically. Tiles
    overlap by the network's receptive radius (and bicubic's 2 pixels), so the result equals untiled
    inference, and memory stays bounded by the tile size plus the uint8 output. A GPU takes the
    batch at once; a CPU one picture at a time, so that its activations stay in the caches
    (`srctl video` of 640x360 frames in batches of 8: 1.31x the frames/s in bf16, 1.20x in fp32
    held to AVX2, on the EPYC; `bench/video_speed.py --against`)."""
    # weights too, not only activations: ~1.8x faster on CPU
    net.to(memory_format=torch.channels_last)
    device = next(net.parameters()).device
    n, c, h, w = x.shape
    out = torch.empty((n, c, h * net.scale, w * net.scale), dtype=torch.uint8, device=x.device)

    def run(part: torch.Tensor) -> torch.Tensor:
        r = upscale_float(net, part.to(device).float(), amp)
        return r.round_().clamp_(0, 255).to(torch.uint8).to(x.device)

    step = 1 if device.type == "cpu" else n
    for i in range(0, n, step):
        part = slice(i, i + step)
        tiled(x[part], out[part], net.scale, tile, max(receptive_radius(net), 2), run, progress)
    return out


def resized(x: torch.Tensor, size, multiple: int = 1) -> torch.Tensor:
    """uint8 [N, C, H, W] brought to `size` (see target_size): bicubic, antialiased when shrinking
    (the network's output, for a size that is not a multiple of its scale)."""
    w, h = target_size(size, x.shape[-1], x.shape[-2], multiple)
    if (w, h) == (x.shape[-1], x.shape[-2]):
        return x
    y = F.interpolate(x.float(), size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def upscale_image(
    net: M.ESPCN, img: Image.Image, tile: int = TILE, amp: torch.dtype | None = None
) -> Image.Image:
    """Any image in, `net.scale` times larger out: RGB (L for greyscale), and its alpha if any."""
    return to_image(upscale_batch(net, to_tensor(img)[None], tile, amp)[0])


class TorchEngine:
    """infer.engine on PyTorch: the model on `device` (the GPU if any) in `precision` (the
    hardware's native one if None), its output resized to `size` if given."""

    def __init__(
        self,
        model_dir: Path,
        device=None,
        precision_name=None,
        tile=TILE,
        size=None,
        progress=False,
    ):
        where = pick_device(device)
        self.net, self.amp = M.load(model_dir, where), precision(precision_name, where)
        self.scale, self.tile, self.size, self.progress = self.net.scale, tile, size, progress

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = upscale_batch(self.net, torch.from_numpy(x), self.tile, self.amp, self.progress)
        return (resized(out, self.size) if self.size else out).numpy()
