"""Stage `evaluate`: PSNR and SSIM of the trained model on the full BSDS300 test images, and of bicubic.

The SR literature's convention: HR cropped to a multiple of the scale, LR by antialiased bicubic
downscaling, metrics on the Y of BT.601 studio-range YCbCr with `scale` pixels cut from each border,
averaged over images. The model's result is the very RGB image `srctl infer` would write.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from srctl import model as M
from srctl import params as P
from srctl import registry
from srctl.errors import SrctlError, run_stage
from srctl.color import BT601_STUDIO
from srctl.files import write_json
from srctl.infer import pick_device, upscale_image
from srctl.prepare import crop_to_multiple, downscale


def y_studio(img: Image.Image, gray: bool = False) -> np.ndarray:
    """Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, as float64 in 16..235.

    A grayscale original is its own Y (0..255), as the literature's scripts score it (Set14's bridge):
    studio-scaling it would read 1.32 dB higher."""
    if gray:
        return np.asarray(img.convert("L"), dtype=np.float64)
    rgb = np.asarray(img.convert("RGB"), dtype=np.float64)
    return 16.0 + rgb @ np.array(BT601_STUDIO[0]) / 255.0


def psnr(a: torch.Tensor, b: torch.Tensor, border: int) -> torch.Tensor:
    """PSNR per image of [..., H, W] tensors on a 0..255 scale, `border` pixels cut from each side."""
    if border:
        a, b = a[..., border:-border, border:-border], b[..., border:-border, border:-border]
    mse = (a.double() - b.double()).pow(2).mean(dim=(-2, -1))
    return 10 * torch.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, border: int) -> float:
    """SSIM with the Gaussian window of Wang et al. (sigma 1.5), as SR papers report it."""
    from skimage.metrics import structural_similarity

    if border:
        a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    return float(
        structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    )


def score(hr: Image.Image, out: Image.Image, scale: int, gray: bool = False) -> tuple[float, float]:
    a, b = y_studio(out, gray), y_studio(hr, gray)
    return float(psnr(torch.from_numpy(a), torch.from_numpy(b), scale)), ssim(a, b, scale)


def evaluate(net: M.ESPCN, paths: list[Path], samples: int = 0) -> tuple[dict[str, float], dict[str, Image.Image]]:
    """Mean PSNR/SSIM of `net` and of bicubic on `paths`; side-by-side pictures of the first `samples`."""
    s = net.scale
    rows, pictures = [], {}
    for i, path in enumerate(paths):
        with Image.open(path) as original:
            gray = original.getbands() == ("L",)
            hr = crop_to_multiple(original.convert("RGB"), s)
        lr = downscale(hr, s)
        sr, bicubic = upscale_image(net, lr), lr.resize(hr.size, Image.Resampling.BICUBIC)
        rows.append((*score(hr, sr, s, gray), *score(hr, bicubic, s, gray)))
        if i < samples:
            strip = Image.new("RGB", (hr.width * 3, hr.height))
            for j, part in enumerate((bicubic, sr, hr)):
                strip.paste(part, (j * hr.width, 0))
            pictures[f"{path.stem}_bicubic_sr_hr"] = strip
    mean = np.mean(rows, axis=0)
    metrics = dict(zip(("psnr", "ssim", "bicubic_psnr", "bicubic_ssim"), map(float, mean)))
    metrics["psnr_gain"] = metrics["psnr"] - metrics["bicubic_psnr"]
    return metrics, pictures


def main() -> None:
    params, root = P.load(), P.project_root()
    paths = sorted((root / "data" / "raw" / "BSDS300" / "images" / "test").glob("*.jpg"))
    paths = paths[: params.evaluate.max_images or None]
    if not paths:
        raise SrctlError("data/raw/BSDS300/images/test: no images; run the download stage first")
    net = M.load(root / "models" / "espcn", pick_device())
    metrics, pictures = evaluate(net, paths, params.evaluate.samples)
    metrics["images"] = len(paths)
    write_json(root / "metrics" / "evaluate.json", metrics)
    registry.log_evaluation(registry.read_run(root)["run_id"], metrics, pictures)
    print(
        f"evaluate: x{net.scale} on {len(paths)} BSDS300 test images: PSNR {metrics['psnr']:.2f} dB "
        f"(bicubic {metrics['bicubic_psnr']:.2f}), SSIM {metrics['ssim']:.4f} (bicubic {metrics['bicubic_ssim']:.4f})"
    )


if __name__ == "__main__":
    run_stage(main)
