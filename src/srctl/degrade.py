"""How a low-resolution input is made from a high-resolution original.

`downscale` is the SR literature's clean LR (prepare's training pairs for `train.degradation:
clean`, and every test input); `jpeg` is how a messenger app sends a picture (the benchmark's
degraded rows, and the test inputs of a `real` model); `real` is the random chain of blur,
downscaling kernel, noise and JPEG that makes the training pictures of a `real` model, as real
photos are made (Real-ESRGAN trains on such a chain for the same reason).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from srctl import params as P

MESSENGER_QUALITY = 50  # the degraded test inputs: JPEG quality 50, 4:2:0, as messengers send
KERNELS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
}


def crop_to_multiple(img: Image.Image, scale: int) -> Image.Image:
    w, h = img.size
    return img.crop((0, 0, w - w % scale, h - h % scale))


def downscale(img: Image.Image, scale: int, kernel: str = "bicubic") -> Image.Image:
    """Antialiased downscale of an image whose sides are multiples of `scale`.

    PIL's resize filters over the whole footprint when shrinking, like MATLAB's imresize."""
    return img.resize((img.width // scale, img.height // scale), KERNELS[kernel])


def jpeg(img: Image.Image, quality: int = MESSENGER_QUALITY) -> Image.Image:
    """`img` saved as JPEG at `quality` with 4:2:0 chroma (Pillow), and decoded again."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality, subsampling=2)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


def _noise(img: Image.Image, cfg: P.Degrade, rng: np.random.Generator) -> Image.Image:
    x = np.asarray(img, dtype=np.float64)
    if rng.random() < cfg.poisson:  # shot noise: a sensor counts photons, fewer in the dark
        peak = 10 ** rng.uniform(*np.log10(cfg.poisson_peak))
        x = rng.poisson(x / 255 * peak) / peak * 255
    else:  # Gaussian, in colour or the same on every channel (grey)
        shape = x.shape if rng.random() < 0.6 else (*x.shape[:2], 1)
        x = x + rng.normal(0.0, rng.uniform(*cfg.noise_sigma), shape)
    return Image.fromarray(x.round().clip(0, 255).astype(np.uint8))


def real(hr: Image.Image, scale: int, cfg: P.Degrade, rng: np.random.Generator) -> Image.Image:
    """One LR picture of `hr` (RGB, sides multiples of `scale`) as real ones come: maybe blurred,
    downscaled by a random kernel, maybe noisy, maybe JPEG at a random quality; each step drawn
    from `rng` with params.yaml's probabilities and ranges."""
    img = hr
    if rng.random() < cfg.blur:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(*cfg.blur_sigma)))
    img = downscale(img, scale, cfg.kernels[rng.integers(len(cfg.kernels))])
    if rng.random() < cfg.noise:
        img = _noise(img, cfg, rng)
    if rng.random() < cfg.jpeg:
        img = jpeg(img, int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))
    return img
