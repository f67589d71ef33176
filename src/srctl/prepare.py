"""Stage `prepare`: BSDS300 JPEGs -> high/low-resolution Y-channel pairs in two safetensors files.

HR = image cropped to a multiple of the scale; LR = its antialiased bicubic downscale, or for
`train.degradation: real` a pool of randomly degraded copies of it (degrade.py), from which
training cuts its patches: degrading once here costs the training step nothing.
Portrait images are turned to landscape so each split stacks into one uint8 tensor that training
keeps resident (on the GPU too). The user's own pictures (`prepare.extra_train`, folders under
data/extra) join the training split as tiles of the BSDS300 pictures' size."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from srctl import degrade
from srctl import params as P
from srctl.color import y_channel
from srctl.degrade import downscale
from srctl.download import content_hash, files_hash
from srctl.errors import SrctlError, run_main
from srctl.files import atomic_dir
from srctl.pictures import IMAGE_SUFFIXES, decode_image, rgb


def _landscape(img: Image.Image) -> Image.Image:
    img = rgb(img)
    return img.transpose(Image.Transpose.ROTATE_90) if img.height > img.width else img


def landscape_crops(paths: list[Path], scale: int) -> list[Image.Image]:
    """The RGB images of `paths` turned to landscape and cropped to one common size, a multiple of
    `scale`."""
    imgs = [_landscape(Image.open(path)) for path in paths]
    w = min(i.width for i in imgs) // scale * scale
    h = min(i.height for i in imgs) // scale * scale
    return [i.crop((0, 0, w, h)) for i in imgs]


def extra_images(folders: list[str], root: Path) -> list[Path]:
    """The image files in prepare.extra_train's folders (relative to the project `root`), sorted;
    each folder must lie under data/extra, which the prepare stage depends on (so DVC sees a change
    to it), and hold images."""
    extra, files = P.Paths(root).extra.resolve(), []
    for name in folders:
        folder = (root / name).resolve()
        if not folder.is_relative_to(extra):
            raise SrctlError(
                f"prepare.extra_train: {name} is not under data/extra, the folder the prepare "
                "stage depends on; move it there (and `dvc add` it)"
            )
        if not folder.is_dir():
            what = "not a folder" if folder.exists() else "no such folder"
            raise SrctlError(f"prepare.extra_train: {name}: {what}")
        found = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise SrctlError(f"prepare.extra_train: {name}: no images in it")
        files += found
    return list(dict.fromkeys(files))  # a picture in two named folders (one inside the other) once


def _tiles(path: Path, w: int, h: int) -> list[Image.Image]:
    """One of the user's pictures (turned to landscape) as the w x h tiles that fit in it."""
    img = _landscape(decode_image(path, str(path)))  # upright by its EXIF orientation first
    nx, ny = img.width // w, img.height // h
    if not nx or not ny:
        raise SrctlError(
            f"{path}: {img.width}x{img.height} is smaller than a {w}x{h} training picture"
        )
    x0, y0 = (img.width - nx * w) // 2, (img.height - ny * h) // 2  # a centred grid
    return [
        img.crop((x0 + i * w, y0 + j * h, x0 + (i + 1) * w, y0 + (j + 1) * h))
        for j in range(ny)
        for i in range(nx)
    ]


def _lr(hr: Image.Image, index: int, split: str, scale: int, params: P.Params) -> np.ndarray:
    """The LR Y channels of one HR image, [variants, h, w]: for `clean`, its bicubic downscale;
    for `real`, the test split gets the messenger's JPEG of it (what a real model is scored on)
    and the train split `degrade.variants` random degradations, seeded by image and variant."""
    if params.train.degradation == "clean":
        return y_channel(downscale(hr, scale))[None]
    if split == "test":
        return y_channel(degrade.jpeg(downscale(hr, scale)))[None]
    cfg = params.degrade
    rngs = [np.random.default_rng([params.seed, index, v]) for v in range(cfg.variants)]
    return np.stack([y_channel(degrade.real(hr, scale, cfg, rng)) for rng in rngs])


def pairs(hr: list[Image.Image], split: str, params: P.Params) -> dict[str, torch.Tensor]:
    """HR and LR Y channels of the same-size pictures `hr` as uint8 tensors [N, 1, H, W] and
    [N, V, H/s, W/s] (V LR variants of each: 1, or degrade.variants for a real model's training
    pictures)."""
    return {
        "hr": torch.from_numpy(np.stack([y_channel(i) for i in hr]))[:, None],
        "lr": torch.from_numpy(
            np.stack([_lr(img, i, split, params.scale, params) for i, img in enumerate(hr)])
        ),
    }


def prepare(
    raw_dir: Path, out_dir: Path, params: P.Params, extra: Sequence[Path] = ()
) -> dict[str, int]:
    """Write train.safetensors and test.safetensors into `out_dir` (atomically); the training
    split gets the tiles of the `extra` image files (see extra_images) after BSDS300's pictures.
    Returns how many pictures went into each split."""
    from safetensors.torch import save_file

    dataset, cfg = raw_dir / "BSDS300", params.prepare
    # one metadata entry: safetensors writes several in a random order, so the same data would get
    # another file hash (and DVC would see a change) on every run
    facts = {"scale": str(params.scale), "dataset_sha256": content_hash(dataset)}
    facts |= {"degradation": params.train.degradation}
    if extra:
        facts |= {"extra_train": ", ".join(cfg.extra_train), "extra_sha256": files_hash(extra)}
    counts = {}
    with atomic_dir(out_dir) as tmp:
        for split, limit in (("train", cfg.max_train_images), ("test", cfg.max_test_images)):
            paths = sorted((dataset / "images" / split).glob("*.jpg"))[: limit or None]
            if not paths:
                raise SrctlError(
                    f"{dataset}/images/{split}: no JPEG images; run the download stage first"
                )
            hr = landscape_crops(paths, params.scale)
            if split == "train":
                hr += [tile for f in extra for tile in _tiles(f, hr[0].width, hr[0].height)]
            meta = {"srctl": json.dumps(facts)}
            save_file(pairs(hr, split, params), str(tmp / f"{split}.safetensors"), metadata=meta)
            counts[split] = len(hr)
    return counts


def load_split(
    prepared_dir: Path, split: str, device: str | torch.device = "cpu"
) -> tuple[dict, dict]:
    """The tensors of one split on `device`, and the file's metadata (scale, dataset hash)."""
    from safetensors import safe_open

    path = prepared_dir / f"{split}.safetensors"
    if not path.is_file():
        raise SrctlError(f"{path}: missing; run the prepare stage first")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return tensors, json.loads(meta.pop("srctl", "{}")) | meta
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise SrctlError(f"{path}: damaged ({exc}); run the prepare stage again") from exc


def main() -> None:
    params, where = P.load(), P.paths()
    extra = extra_images(params.prepare.extra_train, where.root)  # bad folders fail here, first
    counts = prepare(where.raw, where.prepared, params, extra)
    yours = f" (with {len(extra)} of your pictures, as tiles)" if extra else ""
    print(
        f"prepare: x{params.scale} {params.train.degradation} pairs from {counts['train']} train"
        f"{yours} and {counts['test']} test pictures"
    )


if __name__ == "__main__":
    run_main(main)
