"""Stage `prepare`: BSDS300 JPEGs -> high/low-resolution Y-channel pairs in two safetensors files.

HR = image cropped to a multiple of the scale; LR = its antialiased bicubic downscale, or for
`train.degradation: real` a pool of randomly degraded copies of it (degrade.py), from which
training cuts its patches: degrading once here costs the training step nothing.
Portrait images are turned to landscape so each split stacks into one uint8 tensor that training
keeps resident (on the GPU too)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from srctl import degrade
from srctl import params as P
from srctl.color import y_channel
from srctl.degrade import downscale
from srctl.download import content_hash
from srctl.errors import SrctlError, run_main
from srctl.files import atomic_dir


def _images(paths: list[Path], scale: int) -> list[Image.Image]:
    """The RGB images of `paths` turned to landscape and cropped to one common size, a multiple of
    `scale`."""
    imgs = []
    for path in paths:
        img = Image.open(path).convert("RGB")
        imgs.append(img.transpose(Image.Transpose.ROTATE_90) if img.height > img.width else img)
    w = min(i.width for i in imgs) // scale * scale
    h = min(i.height for i in imgs) // scale * scale
    return [i.crop((0, 0, w, h)) for i in imgs]


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


def pairs(paths: list[Path], split: str, params: P.Params) -> dict[str, torch.Tensor]:
    """HR and LR Y channels of `paths` as uint8 tensors [N, 1, H, W] and [N, V, H/s, W/s] (V LR
    variants of each image: 1, or degrade.variants for a real model's training pictures)."""
    hr = _images(paths, params.scale)
    return {
        "hr": torch.from_numpy(np.stack([y_channel(i) for i in hr]))[:, None],
        "lr": torch.from_numpy(
            np.stack([_lr(img, i, split, params.scale, params) for i, img in enumerate(hr)])
        ),
    }


def prepare(raw_dir: Path, out_dir: Path, params: P.Params) -> dict[str, int]:
    from safetensors.torch import save_file

    dataset, cfg = raw_dir / "BSDS300", params.prepare
    # one metadata entry: safetensors writes several in a random order, so the same data would get
    # another file hash (and DVC would see a change) on every run
    facts = {"scale": str(params.scale), "dataset_sha256": content_hash(dataset)}
    meta = {"srctl": json.dumps(facts | {"degradation": params.train.degradation})}
    counts = {}
    with atomic_dir(out_dir) as tmp:
        for split, limit in (("train", cfg.max_train_images), ("test", cfg.max_test_images)):
            paths = sorted((dataset / "images" / split).glob("*.jpg"))[: limit or None]
            if not paths:
                raise SrctlError(
                    f"{dataset}/images/{split}: no JPEG images; run the download stage first"
                )
            save_file(pairs(paths, split, params), str(tmp / f"{split}.safetensors"), metadata=meta)
            counts[split] = len(paths)
    return counts


def load_split(
    prepared_dir: Path, split: str, device: str | torch.device = "cpu"
) -> tuple[dict, dict]:
    """The tensors of one split on `device`, and the file's metadata (scale, dataset hash)."""
    from safetensors import safe_open

    path = prepared_dir / f"{split}.safetensors"
    if not path.is_file():
        raise SrctlError(f"{path}: missing; run the prepare stage first")
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        meta = f.metadata()
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(meta.pop("srctl", "{}")) | meta


def main() -> None:
    params, where = P.load(), P.paths()
    counts = prepare(where.raw, where.prepared, params)
    print(
        f"prepare: x{params.scale} {params.train.degradation} pairs from {counts['train']} train "
        f"and {counts['test']} test images"
    )


if __name__ == "__main__":
    run_main(main)
