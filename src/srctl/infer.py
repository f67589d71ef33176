"""`srctl infer`: image files in, upscaled PNGs out, through an engine that runs the network:
onnxruntime (runtime.py) on CPUs in fp32, PyTorch (upscale.py) elsewhere. This module imports
neither torch nor onnxruntime itself, so that the ONNX path starts in a fraction of a second.

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
from PIL import Image

from srctl.errors import SrctlError
from srctl.files import atomic_path
from srctl.pictures import (
    IMAGE_SUFFIXES,
    TILE,
    decode_image,
    from_array,
    icc_profile,
    to_array,
)

BATCH = 8  # same-size images run through the network together


def engine(
    model_dir: Path,
    device: str | None = None,
    precision: str | None = None,
    tile: int = TILE,
    size: tuple[int | None, int | None] | None = None,
    progress: bool = False,
):
    """What runs the model in `model_dir`: a callable uint8 [N, C, h, w] -> [N, C, H, W] (numpy)
    with `scale` and `tile`. onnxruntime where it suits (runtime.suits: the CPU in fp32, where
    PyTorch's import alone took as long as the network on a 720p frame), else PyTorch (any
    device and precision, and --size)."""
    from srctl import runtime

    if runtime.suits(device, precision, size):
        return runtime.OnnxEngine(model_dir, tile, progress)
    from srctl.upscale import TorchEngine

    return TorchEngine(model_dir, device, precision, tile, size, progress)


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


def check_path(path: Path, folder: str = "is a folder with no images in it") -> None:
    """A one-line error for an input that is a `folder` or missing."""
    if path.is_dir():
        raise SrctlError(f"{path}: {folder}")
    if not path.exists():
        raise SrctlError(f"{path}: no such file" + (" matches" if is_pattern(path.name) else ""))


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


def save_image(img: Image.Image, path: Path, icc_profile: bytes | None = None) -> Image.Image:
    """Write atomically (temporary name, then rename), in the format the extension names; returns
    what was written: `img`, or its colours alone where the format keeps no alpha (JPEG)."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    # PNG at zlib level 1: ~3x faster to write than Pillow's default 6; files ~40% larger on photos
    options = {"format": fmt, "icc_profile": icc_profile}
    if fmt == "PNG":
        options["compress_level"] = 1
    try:
        with atomic_path(path) as tmp:
            try:
                img.save(tmp, **options)
            except OSError as exc:  # "cannot write mode RGBA as JPEG"
                if img.mode not in ("RGBA", "LA") or "cannot write mode" not in str(exc):
                    raise
                img = img.convert(img.mode[:-1])
                img.save(tmp, **options)
    except (ValueError, OSError, KeyError) as exc:
        raise SrctlError(f"{path}: cannot write ({exc})") from exc
    return img


def is_folder(output: str | Path, many: bool = False) -> bool:
    """Whether `-o` names a folder: it is one, its name ends with '/', or the inputs are `many`."""
    return many or str(output).endswith(("/", os.sep)) or Path(output).is_dir()


def image_file(output: str | Path) -> Path:
    """`-o` as an image file: its suffix must name a format Pillow writes."""
    path = Path(output)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt not in Image.SAVE:
        raise SrctlError(
            f"{output}: no image format by that suffix (.png, .jpg, .webp, ...); "
            "a folder's name ends with /"
        )
    if fmt in ("ICO", "ICNS"):  # icons: Pillow writes the picture shrunk to icon sizes
        raise SrctlError(f"{output}: an icon holds at most 256x256; name a picture format")
    return path


def check_outputs(inputs: list[Path], outs: list[Path], force: bool = False) -> list[Path]:
    """`outs` unless one is an input, two are the same, or (without `force`) one exists."""
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


def output_paths(
    inputs: list[Path],
    output: str | Path | None,
    scale: int,
    force: bool = False,
    many: bool | None = None,
) -> list[Path]:
    """Where each input's result goes: <stem>_x<scale>.png beside it without `output`; <stem>.png
    in `output` when that is a folder (see is_folder; `many`: the arguments named several
    pictures, a folder or a pattern, by default when there are several inputs); else the file
    `output`. Never an input, nor (without `force`) an existing file."""
    many = len(inputs) > 1 if many is None else many
    if output is None:
        outs = [p.with_name(f"{p.stem}_x{scale}.png") for p in inputs]
    elif is_folder(output, many):
        folder = Path(output)
        if folder.exists() and not folder.is_dir():
            raise SrctlError(f"{output}: is a file; -o must name a folder here")
        if not is_folder(output) and folder.suffix.lower() in Image.registered_extensions():
            raise SrctlError(f"{output}: names an image, but the inputs are several: name a folder")
        outs = [folder / f"{p.stem}.png" for p in inputs]
    else:
        outs = [image_file(output)]
    return check_outputs(inputs, outs, force)


def is_pattern(arg: str) -> bool:
    return any(c in arg for c in "*?[")


def many_inputs(args: list[str]) -> bool:
    """Whether the arguments name several pictures, a folder or a pattern: then -o is a folder,
    even where they come down to one picture."""
    return len(args) > 1 or any(Path(a).is_dir() or is_pattern(a) for a in args)


def collect_inputs(args: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns, in order, each file once.

    A folder without images or a pattern that matches nothing stays as it is, for check_path
    to report."""
    found: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found += sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            ) or [path]
        elif not path.exists() and is_pattern(arg):
            found += sorted(Path(m) for m in glob.glob(arg)) or [path]
        else:
            found.append(path)
    unique = {p.resolve(): p for p in reversed(found)}
    return [p for p in found if unique[p.resolve()] is p]


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
            x = to_array(img)
            yield src, dst, x, icc_profile(img, x.shape[0])

    def write(self, batch: list[tuple[Path, Path, np.ndarray, bytes | None]], results) -> None:
        for (src, dst, _, icc), result in zip(batch, results, strict=True):
            try:
                img = from_array(result)
                saved = save_image(img, dst, icc)
                line = f"{src} -> {dst} ({img.width}x{img.height} {saved.mode}"
                line += f", alpha dropped: {dst.suffix} keeps none)" if saved is not img else ")"
                self.bar.write(line, file=sys.stdout)
            except SrctlError as exc:
                self.fail(exc)
        self.bar.update(len(batch))


def infer(
    inputs: list[Path],
    run,
    output: str | Path | None = None,
    force: bool = False,
    progress: bool = False,
    many: bool | None = None,
) -> int:
    """Upscale every input with `run` (see `engine`) to output_paths(inputs, output, ..., many);
    returns how many failed.

    Consecutive small images of the same size go through the network as one batch. A file that fails
    is reported on stderr (one line) and skipped; the others are still written."""
    outs = output_paths(inputs, output, run.scale, force, many)
    folder = outs[0].parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SrctlError(f"{folder}: cannot make the folder ({exc.strerror or exc})") from exc
    report = _Report(len(inputs), progress)  # the engine adds a bar over a big image's tiles
    # PNG encoding (Pillow lets go of the GIL) overlaps decoding and the next batch's network; one
    # batch is written while the next is computed, no more, so memory stays bounded
    with ThreadPoolExecutor(max_workers=1) as writer:
        writing = None
        for batch in _batches(report.decoded(inputs, outs), run.tile):
            results = run(np.stack([x for _, _, x, _ in batch]))
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

    def __init__(self, net):
        self.net = net

    def predict(self, model_input, params=None) -> list[str]:
        from mlflow.exceptions import MlflowException

        from srctl.upscale import upscale_image

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
    from srctl import model as M
    from srctl.device import pick_device

    return PyfuncModel(M.load(Path(data_path), pick_device()))
