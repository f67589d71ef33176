"""Upscale images with a trained ESPCN in YCbCr: the network upscales Y, Cb and Cr go bicubic.

Also the MLflow pyfunc loader of a logged model (`loader_module="srctl.infer"`): base64 image
file bytes in, base64 PNGs out.
"""

from __future__ import annotations

import base64
import glob
import io
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from srctl import model as M
from srctl.color import decode_image, rgb_to_ycbcr, to_image, to_tensor, ycbcr_to_rgb
from srctl.device import pick_device
from srctl.errors import SrctlError
from srctl.files import atomic_path

TILE = 512  # LR pixels per tile side: memory stays bounded whatever the image size
BATCH = 8  # same-size images run through the network together


def _bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


def receptive_radius(net: M.ESPCN) -> int:
    """How far (in LR pixels) an output pixel sees: the overlap that makes tiles seamless."""
    return sum(m.kernel_size[0] // 2 for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def _upscale(net: M.ESPCN, x: torch.Tensor, amp: torch.dtype | None) -> torch.Tensor:
    """float [N, C, h, w] in 0..255 on the net's device -> float [N, C, h*s, w*s]."""
    s, c = net.scale, x.shape[1]
    ycc = rgb_to_ycbcr(x[:, :3]) if c >= 3 else x[:, :1]
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        y = net((ycc[:, :1] / 255).contiguous(memory_format=torch.channels_last))
    parts = [y.float().clamp(0, 1) * 255]
    if c >= 3:
        parts = [ycbcr_to_rgb(torch.cat([parts[0], _bicubic(ycc[:, 1:], s)], 1))]
    if c in (2, 4):  # alpha
        parts.append(_bicubic(x[:, -1:], s))
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
    inference, and memory stays bounded by the tile size plus the uint8 output."""
    s, halo = net.scale, max(receptive_radius(net), 2)
    net.to(
        memory_format=torch.channels_last
    )  # weights too, not only activations: ~1.8x faster on CPU
    device = next(net.parameters()).device
    n, c, h, w = x.shape
    out = torch.empty((n, c, h * s, w * s), dtype=torch.uint8, device=x.device)
    corners = [(y0, x0) for y0 in range(0, h, tile) for x0 in range(0, w, tile)]
    if progress and len(corners) > 1:  # a big image: show its tiles
        from tqdm import tqdm

        corners = tqdm(corners, unit="tile", leave=False, file=sys.stderr)
    for y0, x0 in corners:
        y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
        a0, b0, a1, b1 = max(y0 - halo, 0), max(x0 - halo, 0), min(y1 + halo, h), min(x1 + halo, w)
        r = _upscale(net, x[:, :, a0:a1, b0:b1].to(device).float(), amp)
        r = r[:, :, (y0 - a0) * s : (y1 - a0) * s, (x0 - b0) * s : (x1 - b0) * s]
        out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = (
            r.round_().clamp_(0, 255).to(torch.uint8).to(x.device)
        )
    return out


def parse_size(text: str) -> tuple[int | None, int | None]:
    """`--size`: WxH, or one side (W or Wx for the width, xH for the height) whose other side
    keeps the aspect ratio."""
    w, _, h = text.strip().lower().partition("x")
    try:
        size = (int(w) if w else None, int(h) if h else None)
    except ValueError:
        size = (None, None)
    if size == (None, None) or any(v is not None and not 1 <= v <= 65535 for v in size):
        raise SrctlError(f"--size {text!r}: expected WxH, W or xH in pixels (1-65535)")
    return size


def target_size(size, width: int, height: int, multiple: int = 1) -> tuple[int, int]:
    """The (width, height) that `size` (from parse_size) asks of a `width` x `height` picture; a
    side computed from the aspect ratio is rounded to a `multiple` (2 for 4:2:0 video)."""
    w, h = size
    fit = lambda v: max(multiple, round(v / multiple) * multiple)  # noqa: E731
    if w and h:
        return w, h
    return (w, fit(height * w / width)) if w else (fit(width * h / height), h)


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


def check_path(path: Path) -> None:
    if path.is_dir():
        raise SrctlError(f"{path}: is a folder with no images in it")
    if not path.exists():
        raise SrctlError(
            f"{path}: no such file" + (" matches" if any(c in path.name for c in "*?[") else "")
        )


def check_inputs(paths: list[Path]) -> None:
    """Refuse at once (before a model is fetched) when no input can be read: a line per reason."""
    problems = []
    for path in paths:
        try:
            check_path(path)
        except SrctlError as exc:
            problems.append(str(exc))
    if len(problems) == len(paths):
        raise SrctlError("\n".join(problems))


def open_image(path: Path) -> Image.Image:
    check_path(path)
    return decode_image(path, str(path))


def save_image(img: Image.Image, path: Path, icc_profile: bytes | None = None) -> None:
    """Write atomically (temporary name, then rename), in the format the extension names."""
    try:
        with atomic_path(path) as tmp:
            fmt = Image.registered_extensions().get(path.suffix.lower())
            # PNG at zlib level 1: ~3x faster to write than Pillow's default 6; files ~40% larger on
            # photos
            img.save(
                tmp,
                format=fmt,
                icc_profile=icc_profile,
                **({"compress_level": 1} if fmt == "PNG" else {}),
            )
    except (ValueError, OSError, KeyError) as exc:
        raise SrctlError(f"{path}: cannot write ({exc})") from exc


def output_paths(
    inputs: list[Path], output: Path | None, scale: int, force: bool = False
) -> list[Path]:
    """Where each input's result goes; never an input, nor (without `force`) an existing file."""
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


def collect_inputs(args: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns, in order, each file once.

    A folder without images or a pattern that matches nothing stays as it is, for check_path
    to report."""
    found: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found += sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _READABLE
            ) or [path]
        elif not path.exists() and any(c in arg for c in "*?["):
            found += sorted(Path(m) for m in glob.glob(arg)) or [path]
        else:
            found.append(path)
    unique = {p.resolve(): p for p in reversed(found)}
    return [p for p in found if unique[p.resolve()] is p]


_READABLE = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _batches(items, tile: int):
    """Consecutive images (item[2]: uint8 [C, H, W]) of one size, up to BATCH of them; an image
    larger than one tile goes alone, so that memory stays bounded."""
    batch: list = []
    for item in items:
        x = item[2]
        if batch and (x.shape != batch[0][2].shape or len(batch) == BATCH):
            yield batch
            batch = []
        batch.append(item)
        if max(x.shape[1:]) > tile:
            yield batch
            batch = []
    if batch:
        yield batch


class _Report:
    """One progress bar over the files (when there are several) and the count of failures, which
    the writer thread adds to as well."""

    def __init__(self, total: int, progress: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="img", disable=not progress or total < 2, file=sys.stderr)
        self.failed = 0
        self._lock = threading.Lock()

    def fail(self, exc: SrctlError) -> None:
        with self._lock:
            self.failed += 1
        self.bar.write(f"error: {exc}", file=sys.stderr)

    def decoded(self, inputs: list[Path], outs: list[Path]):
        """(src, dst, tensor, icc) of each input that opens; the others are reported and skipped."""
        for src, dst in zip(inputs, outs, strict=True):
            try:
                img = open_image(src)
            except SrctlError as exc:
                self.fail(exc)
                self.bar.update(1)
                continue
            yield src, dst, to_tensor(img), img.info.get("icc_profile")

    def write(self, batch: list[tuple[Path, Path, torch.Tensor, bytes | None]], results) -> None:
        for (src, dst, _, icc), result in zip(batch, results, strict=True):
            try:
                img = to_image(result)
                save_image(img, dst, icc)
                line = f"{src} -> {dst} ({img.width}x{img.height} {img.mode})"
                self.bar.write(line, file=sys.stdout)
            except SrctlError as exc:
                self.fail(exc)
        self.bar.update(len(batch))


def infer(
    inputs: list[Path],
    model_dir: Path,
    output: Path | None = None,
    force: bool = False,
    device: str | None = None,
    amp: torch.dtype | None = None,
    tile: int = TILE,
    progress: bool = False,
    size: tuple[int | None, int | None] | None = None,
) -> int:
    """Upscale every input with the model in `model_dir` (loaded once), resized to `size` if given
    (see parse_size); returns how many failed.

    Consecutive small images of the same size go through the network as one batch. A file that fails
    is reported on stderr (one line) and skipped; the others are still written."""
    net = M.load(model_dir, pick_device(device))
    outs = output_paths(inputs, output, net.scale, force)
    if output and len(inputs) > 1:
        output.mkdir(parents=True, exist_ok=True)
    report = _Report(len(inputs), progress)  # upscale_batch adds a bar over a big image's tiles
    # PNG encoding (Pillow lets go of the GIL) overlaps decoding and the next batch's network; one
    # batch is written while the next is computed, no more, so memory stays bounded
    with ThreadPoolExecutor(max_workers=1) as writer:
        writing = None
        for batch in _batches(report.decoded(inputs, outs), tile):
            results = upscale_batch(
                net, torch.stack([x for _, _, x, _ in batch]), tile, amp, progress
            )
            if size:
                results = resized(results, size)
            if writing:
                writing.result()
            writing = writer.submit(report.write, batch, results)
        if writing:
            writing.result()
    report.bar.close()
    return report.failed


MAX_REQUEST_BYTES = int(os.environ.get("SRCTL_SERVE_MAX_BYTES", 32 << 20))  # per request, decoded
MAX_PIXELS = int(os.environ.get("SRCTL_SERVE_MAX_PIXELS", 4096 * 4096))  # per input image


class PyfuncModel:
    """What `mlflow.pyfunc.load_model` (and `mlflow models serve`) runs for a srctl model:
    base64 image file bytes in, base64 PNGs out. A bad input is an MlflowException (HTTP 400)."""

    def __init__(self, net: M.ESPCN):
        self.net = net

    def predict(self, model_input, params=None) -> list[str]:
        from mlflow.exceptions import MlflowException

        if hasattr(model_input, "iloc"):  # the scoring server hands over a DataFrame
            items = model_input.iloc[:, 0].tolist()
        else:
            items = np.asarray(model_input, dtype=object).ravel().tolist()
        out, total = [], 0
        try:
            for i, item in enumerate(items):
                try:
                    raw = base64.b64decode(item, validate=True)
                except (ValueError, TypeError) as exc:
                    raise SrctlError(f"input {i}: not base64 ({exc})") from exc
                total += len(raw)
                if total > MAX_REQUEST_BYTES:
                    raise SrctlError(f"input {i}: request over {MAX_REQUEST_BYTES} bytes of images")
                img = decode_image(io.BytesIO(raw), f"input {i}", MAX_PIXELS)
                buf = io.BytesIO()
                upscale_image(self.net, img).save(buf, format="PNG", compress_level=1)
                out.append(base64.b64encode(buf.getvalue()).decode())
        except SrctlError as exc:
            raise MlflowException.invalid_parameter_value(str(exc)) from exc
        return out


def _load_pyfunc(data_path: str) -> PyfuncModel:
    return PyfuncModel(M.load(Path(data_path), pick_device()))
