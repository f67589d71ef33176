"""The baseline for bench/infer_speed.py: a naive in-process PyTorch loop of the same network.

NCHW fp32, one image at a time, PIL for colour and bicubic chroma, PIL's default PNG settings.
Usage: python bench/naive_infer.py MODEL_DIR OUT_DIR IMAGE...
"""

import sys
from pathlib import Path

import torch
from PIL import Image

from srctl.model import load

model_dir, out_dir, *images = sys.argv[1:]
net = load(Path(model_dir))
Path(out_dir).mkdir(parents=True, exist_ok=True)
with torch.no_grad():
    for path in images:
        y, cb, cr = Image.open(path).convert("YCbCr").split()
        x = (
            torch.frombuffer(bytearray(y.tobytes()), dtype=torch.uint8)
            .float()
            .div(255)
            .view(1, 1, y.height, y.width)
        )
        out = net(x).clamp(0, 1).mul(255).round().byte()[0, 0].numpy()
        y_sr = Image.fromarray(out, "L")
        merged = Image.merge(
            "YCbCr",
            [y_sr, cb.resize(y_sr.size, Image.BICUBIC), cr.resize(y_sr.size, Image.BICUBIC)],
        )
        merged.convert("RGB").save(Path(out_dir) / (Path(path).stem + ".png"))
