"""How a low-resolution input is made from a high-resolution original, as the SR literature makes
it.

Used by prepare (training pairs) and by evaluate/benchmark (test inputs), so both see the same LR.
"""

from __future__ import annotations

from PIL import Image


def crop_to_multiple(img: Image.Image, scale: int) -> Image.Image:
    w, h = img.size
    return img.crop((0, 0, w - w % scale, h - h % scale))


def downscale(img: Image.Image, scale: int) -> Image.Image:
    """Antialiased bicubic downscale of an image whose sides are multiples of `scale`.

    PIL's resize filters over the whole footprint when shrinking, like MATLAB's imresize."""
    return img.resize((img.width // scale, img.height // scale), Image.Resampling.BICUBIC)
