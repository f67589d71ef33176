"""Upscale images with a trained ESPCN in YCbCr: the network upscales Y, Cb and Cr go bicubic.

Also the MLflow pyfunc loader of a logged model (`loader_module="srctl.infer"`): base64 image
file bytes in, base64 PNGs out.
"""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from srctl import model as M
from srctl.errors import SrctlError
from srctl.files import atomic_path


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@torch.inference_mode()
def upscale_image(net: M.ESPCN, img: Image.Image) -> Image.Image:
    """RGB in, RGB `net.scale` times larger out."""
    y, cb, cr = img.convert("RGB").convert("YCbCr").split()
    device = next(net.parameters()).device
    x = torch.from_numpy(np.array(y)).to(device).float().div_(255)[None, None]
    out = net(x.contiguous(memory_format=torch.channels_last)).clamp_(0, 1)
    y_sr = Image.fromarray(out[0, 0].mul_(255).round_().to(torch.uint8).cpu().numpy(), "L")
    chroma = [c.resize(y_sr.size, Image.Resampling.BICUBIC) for c in (cb, cr)]
    return Image.merge("YCbCr", (y_sr, *chroma)).convert("RGB")


def open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SrctlError(f"{path}: not a readable image ({exc})") from exc


def output_paths(inputs: list[Path], output: Path | None, scale: int, force: bool = False) -> list[Path]:
    """Where each input's result goes; refuses to touch an input or, without `force`, any existing file."""
    if len(inputs) == 1 and not (output and output.is_dir()):
        outs = [output or inputs[0].with_name(f"{inputs[0].stem}_x{scale}.png")]
    elif output:
        if output.exists() and not output.is_dir():
            raise SrctlError(f"{output}: with several inputs, -o must name a folder")
        outs = [output / f"{p.stem}.png" for p in inputs]
    else:
        outs = [p.with_name(f"{p.stem}_x{scale}.png") for p in inputs]
    resolved_inputs = {p.resolve() for p in inputs}
    seen: set[Path] = set()
    for out in outs:
        r = out.resolve()
        if r in resolved_inputs:
            raise SrctlError(f"{out}: is an input; refusing to overwrite it")
        if r in seen:
            raise SrctlError(f"{out}: two inputs would write the same output (same file stem)")
        if out.exists() and not force:
            raise SrctlError(f"{out}: exists; pass --force to overwrite it")
        seen.add(r)
    return outs


def infer(inputs: list[Path], model_dir: Path, output: Path | None = None, force: bool = False) -> int:
    """Upscale every input with the model in `model_dir` (loaded once); returns how many failed."""
    for p in inputs:
        if not p.is_file():
            raise SrctlError(f"{p}: no such file")
    net = M.load(model_dir, pick_device())
    outs = output_paths(inputs, output, net.scale, force)
    if output and len(inputs) > 1:
        output.mkdir(parents=True, exist_ok=True)
    failed = 0
    for src, dst in zip(inputs, outs):
        try:
            result = upscale_image(net, open_image(src))
            with atomic_path(dst) as tmp:
                result.save(tmp)
        except SrctlError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{src} -> {dst} ({result.width}x{result.height})")
    return failed


class PyfuncModel:
    """What `mlflow.pyfunc.load_model` returns for a srctl model."""

    def __init__(self, net: M.ESPCN):
        self.net = net

    def predict(self, model_input, params=None) -> list[str]:
        images = model_input.iloc[:, 0] if hasattr(model_input, "iloc") else model_input
        out = []
        for b64 in images:
            img = Image.open(io.BytesIO(base64.b64decode(b64)))
            buf = io.BytesIO()
            upscale_image(self.net, img).save(buf, format="PNG")
            out.append(base64.b64encode(buf.getvalue()).decode())
        return out


def _load_pyfunc(data_path: str) -> PyfuncModel:
    return PyfuncModel(M.load(Path(data_path), pick_device()))
