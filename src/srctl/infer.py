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
from PIL import Image, ImageOps, UnidentifiedImageError

from srctl import model as M
from srctl.errors import SrctlError
from srctl.files import atomic_path


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _content_and_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """8-bit RGB or L content, and the alpha channel if the image has one.

    16-bit greyscale is scaled to 8 bits; palette, CMYK, 1-bit, LAB... are converted to RGB.
    """
    if img.mode in _SIXTEEN_BIT:
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257).clip(0, 255).round().astype(np.uint8))
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


@torch.inference_mode()
def upscale_image(net: M.ESPCN, img: Image.Image) -> Image.Image:
    """Any image in, `net.scale` times larger out: RGB (or L, greyscale) plus alpha if it had one.

    The network upscales Y; Cb, Cr and alpha are upscaled bicubically.
    """
    content, alpha = _content_and_alpha(img)
    y, *chroma = (content,) if content.mode == "L" else content.convert("YCbCr").split()
    device = next(net.parameters()).device
    x = torch.from_numpy(np.array(y)).to(device).float().div_(255)[None, None]
    out = net(x.contiguous(memory_format=torch.channels_last)).clamp_(0, 1)
    result = Image.fromarray(out[0, 0].mul_(255).round_().to(torch.uint8).cpu().numpy(), "L")
    if chroma:
        chroma = [c.resize(result.size, Image.Resampling.BICUBIC) for c in chroma]
        result = Image.merge("YCbCr", (result, *chroma)).convert("RGB")
    if alpha is not None:
        result.putalpha(alpha.resize(result.size, Image.Resampling.BICUBIC))
    return result


def check_path(path: Path) -> None:
    if path.is_dir():
        raise SrctlError(f"{path}: is a directory, not an image")
    if not path.exists():
        raise SrctlError(f"{path}: no such file")


def open_image(path: Path) -> Image.Image:
    """The decoded image, turned upright by its EXIF orientation; SrctlError naming the file if it can't be."""
    check_path(path)
    try:
        with Image.open(path) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
            upright.info.setdefault("icc_profile", img.info.get("icc_profile"))
            return upright
    except Image.DecompressionBombError as exc:
        raise SrctlError(f"{path}: too many pixels to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise SrctlError(f"{path}: not an image (unknown or empty file)") from exc
    except Exception as exc:  # a decoder fed hostile bytes can raise anything: all of it means 'bad image'
        raise SrctlError(f"{path}: damaged or unreadable image ({type(exc).__name__}: {exc})") from exc


def save_image(img: Image.Image, path: Path, icc_profile: bytes | None = None) -> None:
    """Write atomically (temporary name, then rename), in the format the extension names."""
    try:
        with atomic_path(path) as tmp:
            img.save(tmp, format=Image.registered_extensions().get(path.suffix.lower()), icc_profile=icc_profile)
    except (ValueError, OSError, KeyError) as exc:
        raise SrctlError(f"{path}: cannot write ({exc})") from exc


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
    """Upscale every input with the model in `model_dir` (loaded once); returns how many failed.

    A file that fails is reported on stderr (one line) and skipped; the others are still written.
    """
    net = M.load(model_dir, pick_device())
    outs = output_paths(inputs, output, net.scale, force)
    if output and len(inputs) > 1:
        output.mkdir(parents=True, exist_ok=True)
    failed = 0
    for src, dst in zip(inputs, outs):
        try:
            img = open_image(src)
            result = upscale_image(net, img)
            save_image(result, dst, img.info.get("icc_profile"))
        except SrctlError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{src} -> {dst} ({result.width}x{result.height} {result.mode})")
    return failed


class PyfuncModel:
    """What `mlflow.pyfunc.load_model` returns for a srctl model."""

    def __init__(self, net: M.ESPCN):
        self.net = net

    def predict(self, model_input, params=None) -> list[str]:
        images = model_input.iloc[:, 0] if hasattr(model_input, "iloc") else model_input
        out = []
        for b64 in images:
            img = ImageOps.exif_transpose(Image.open(io.BytesIO(base64.b64decode(b64))))
            buf = io.BytesIO()
            upscale_image(self.net, img).save(buf, format="PNG")
            out.append(base64.b64encode(buf.getvalue()).decode())
        return out


def _load_pyfunc(data_path: str) -> PyfuncModel:
    return PyfuncModel(M.load(Path(data_path), pick_device()))
