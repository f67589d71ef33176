"""ESPCN (Shi et al., CVPR 2016): convolutions on the low-resolution image, then one sub-pixel
shuffle.

Saved as safetensors weights plus a JSON config: loading never unpickles anything."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from srctl.errors import SrctlError
from srctl.files import atomic_path

WEIGHTS, CONFIG = "model.safetensors", "config.json"
# ReLU in place: no fresh buffer per layer; PyTorch fp32 inference 10-15% faster (a 640x360 frame
# 235 ms against 253-306 ms held to AVX2), the same numbers
ACTIVATIONS = {"relu": partial(nn.ReLU, inplace=True), "tanh": nn.Tanh}
# params.yaml's train.arch: hidden widths, activation, whether the network adds its output to
# the bicubic upscale of its input (learns the residual, as VDSR does) or makes the whole image,
# and whether that residual sees contrast only (below)
ARCHS = {
    "seed": ((64, 64, 32), "relu", False, False),  # the seed's network: 59,657 parameters
    # Shi et al.'s: 5x5 64, 3x3 32, 3x3 r^2, tanh (22,729 parameters at x3)
    "paper": ((64, 32), "tanh", False, False),
    "residual": ((64, 64, 32), "relu", True, False),  # the seed's, on top of bicubic
    "contrast": ((64, 64, 32), "relu", True, True),  # residual, blind to the level (59,488)
    # contrast with 8 hidden layers: 4x the parameters (243,808), 3x the training time, +0.07 dB
    # on JPEG inputs (README, Numbers); train it at lr 0.0005 (at 0.002 a deep one stays bicubic)
    "deep": ((64,) * 7 + (32,), "relu", True, True),
}


def bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upscale (Keys, a = -0.75, edges repeated): the residual's base and the chroma's."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


def _keys(t: float, a: float = -0.75) -> float:
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0


def bicubic_as_conv(x: torch.Tensor, scale: int) -> torch.Tensor:
    """`bicubic` as a fixed 5x5 convolution (one filter per output phase) and a pixel shuffle:
    the same numbers (within 1e-5 of 0..1), for ONNX export, where onnxruntime's cubic Resize
    took 30 times as long as the whole network (2.3 s for a 720p frame)."""
    taps = torch.zeros(scale, 5, dtype=torch.float64)
    for phase in range(scale):
        src = (phase + 0.5) / scale - 0.5  # where output pixel `phase` falls between inputs
        first = math.floor(src)
        for j in range(-1, 3):
            taps[phase, first + j + 2] = _keys(src - first - j)
    kernel = torch.einsum("ai,bj->abij", taps, taps).reshape(scale * scale, 1, 5, 5)
    n, c, h, w = x.shape
    planes = F.pad(x.reshape(n * c, 1, h, w), (2, 2, 2, 2), mode="replicate")
    out = F.pixel_shuffle(F.conv2d(planes, kernel.to(x.dtype)), scale)
    return out.reshape(n, c, h * scale, w * scale)


class ESPCN(nn.Module):
    """conv5x5 1->f1, then conv3x3 for each further width (activation after each), conv3x3 ->r^2,
    PixelShuffle(r); with `residual`, plus the bicubic upscale of the input.

    With `contrast` (residual only) the convolutions have no biases and the first one's filters
    sum to zero, so a region of one level, however bright, gives exactly zero before the
    activations (which keep zero) and comes out as its bicubic upscale: the same level. Without
    it, what the biases add shows in flat dark areas as a faint pattern a few levels high."""

    def __init__(
        self,
        scale: int = 3,
        features: tuple[int, ...] = (64, 64, 32),
        activation: str = "relu",
        residual: bool = False,
        contrast: bool = False,
    ):
        super().__init__()
        self.scale, self.features, self.activation = scale, tuple(features), activation
        self.residual, self.contrast = residual, contrast
        chans = (1, *self.features)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(chans, chans[1:], strict=False)):
            k = 5 if i == 0 else 3
            conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=not contrast)
            layers += [conv, ACTIVATIONS[activation]()]
        last = nn.Conv2d(chans[-1], scale**2, 3, padding=1, bias=not contrast)
        layers += [last, nn.PixelShuffle(scale)]
        self.body = nn.Sequential(*layers)
        convs = [m for m in self.body if isinstance(m, nn.Conv2d)]
        for conv in convs[
            :-1
        ]:  # orthogonal init as in the seed, with the activation's gain; plain for the last
            nn.init.orthogonal_(conv.weight, nn.init.calculate_gain(activation))
        nn.init.orthogonal_(convs[-1].weight)

    @classmethod
    def named(cls, arch: str, scale: int) -> ESPCN:
        return cls(scale, *ARCHS[arch])

    def forward(self, y: torch.Tensor, upsample=None) -> torch.Tensor:
        """`upsample` computes the bicubic base of a residual network (default: `bicubic`)."""
        if not self.residual:
            return self.body(y)
        up = (upsample or bicubic)(y, self.scale)
        if not self.contrast:
            return self.body(y) + up
        # the first layer pads by repeating the border (the later ones' zeros are what a flat
        # border gives them then), so a flat picture stays flat up to its edges
        first, k = self.body[0], self.body[0].padding[0]
        w = first.weight - first.weight.mean(dim=(1, 2, 3), keepdim=True)
        # in fp32 under autocast too: bf16 rounds the filters off their zero sum (seen: 3 levels)
        with torch.autocast(y.device.type, enabled=False):
            h = F.conv2d(F.pad(y.float(), (k, k, k, k), mode="replicate"), w.float())
        return self.body[1:](h) + up

    def config(self) -> dict:
        return {
            "arch": "espcn",
            "scale": self.scale,
            "features": list(self.features),
            "activation": self.activation,
            "residual": self.residual,
            "contrast": self.contrast,
        }


def save(model: ESPCN, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    with atomic_path(folder / CONFIG) as tmp:
        tmp.write_text(json.dumps(model.config(), indent=2) + "\n")


def _validated(config: object, where: Path) -> tuple[int, tuple[int, ...], str, bool, bool]:
    ok = (
        isinstance(config, dict)
        and config.get("arch") == "espcn"
        and config.get("scale") in (2, 3, 4)
        and isinstance(config.get("features"), list)
        and 1 <= len(config["features"]) <= 8
        and all(isinstance(f, int) and 1 <= f <= 1024 for f in config["features"])
        and config.get("activation", "relu")
        in ACTIVATIONS  # models saved before tanh existed are ReLU
        and config.get("residual", False) in (True, False)  # and before residual, whole images
        and config.get("contrast", False) in (True, False)
        and not (config.get("contrast") and not config.get("residual"))
    )
    if not ok:
        raise SrctlError(
            f"{where}: not a valid ESPCN config "
            "(need arch=espcn, scale 2-4, features list, relu|tanh, residual and contrast "
            "true|false, contrast only with residual)"
        )
    features, activation = tuple(config["features"]), config.get("activation", "relu")
    residual, contrast = config.get("residual", False), config.get("contrast", False)
    return config["scale"], features, activation, residual, contrast


def load(folder: Path, device: str | torch.device = "cpu") -> ESPCN:
    """Build the network from config.json and load model.safetensors into it, strictly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG).read_text())
        state = load_file(str(folder / WEIGHTS), device="cpu")
    except (OSError, ValueError, SafetensorError) as exc:
        raise SrctlError(f"cannot load model from {folder}: {exc}") from exc
    model = ESPCN(*_validated(config, folder / CONFIG))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SrctlError(f"{folder / WEIGHTS}: weights do not match config.json") from exc
    return model.to(device).eval()
