"""Stage `prepare`: BSDS300 JPEGs -> high/low-resolution Y-channel pairs in two safetensors files.

HR = image cropped to a multiple of the scale; LR = its antialiased bicubic downscale (degrade.py).
Portrait images are turned to landscape so each split stacks into one uint8 tensor that training
keeps resident (on the GPU too)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from srctl import params as P
from srctl.color import y_channel
from srctl.degrade import downscale
from srctl.download import content_hash
from srctl.errors import SrctlError, run_main
from srctl.files import atomic_dir


def pairs(paths: list[Path], scale: int) -> dict[str, torch.Tensor]:
    """Stack HR and LR Y channels of `paths` as uint8 tensors [N, 1, H, W] and [N, 1, H/s, W/s]."""
    imgs = []
    for path in paths:
        img = Image.open(path).convert("RGB")
        imgs.append(img.transpose(Image.Transpose.ROTATE_90) if img.height > img.width else img)
    w = min(i.width for i in imgs) // scale * scale
    h = min(i.height for i in imgs) // scale * scale
    hr = [i.crop((0, 0, w, h)) for i in imgs]
    return {
        "hr": torch.from_numpy(np.stack([y_channel(i) for i in hr]))[:, None],
        "lr": torch.from_numpy(np.stack([y_channel(downscale(i, scale)) for i in hr]))[:, None],
    }


def prepare(raw_dir: Path, out_dir: Path, scale: int, cfg: P.Prepare) -> dict[str, int]:
    from safetensors.torch import save_file

    dataset = raw_dir / "BSDS300"
    # one metadata entry: safetensors writes several in a random order, so the same data would get
    # another file hash (and DVC would see a change) on every run
    meta = {"srctl": json.dumps({"scale": str(scale), "dataset_sha256": content_hash(dataset)})}
    counts = {}
    with atomic_dir(out_dir) as tmp:
        for split, limit in (("train", cfg.max_train_images), ("test", cfg.max_test_images)):
            paths = sorted((dataset / "images" / split).glob("*.jpg"))[: limit or None]
            if not paths:
                raise SrctlError(
                    f"{dataset}/images/{split}: no JPEG images; run the download stage first"
                )
            save_file(pairs(paths, scale), str(tmp / f"{split}.safetensors"), metadata=meta)
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
    counts = prepare(where.raw, where.prepared, params.scale, params.prepare)
    print(
        f"prepare: x{params.scale} pairs from {counts['train']} train "
        f"and {counts['test']} test images"
    )


if __name__ == "__main__":
    run_main(main)
