"""Stage `evaluate`: PSNR and SSIM of the trained model on the full BSDS300 test images, and of
bicubic.

The SR literature's convention: HR cropped to a multiple of the scale, LR by antialiased bicubic
downscaling (for a `train.degradation: real` model, then saved as a messenger's JPEG), metrics on
the Y of BT.601 studio-range YCbCr with `scale` pixels cut from each border, averaged over images.
The model's result is the very RGB image `srctl infer` would write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from srctl import model as M
from srctl import params as P
from srctl import registry
from srctl.degrade import MESSENGER_QUALITY, crop_to_multiple, downscale, jpeg
from srctl.device import pick_device
from srctl.errors import SrctlError, run_main
from srctl.files import write_json
from srctl.metrics import score
from srctl.pictures import content_and_alpha, decode_image
from srctl.upscale import upscale_image


def evaluate(
    net: M.ESPCN, paths: list[Path], samples: int = 0, quality: int | None = None
) -> tuple[dict[str, float], dict[str, Image.Image]]:
    """Mean PSNR/SSIM of `net` and of bicubic on `paths`; pictures of the first `samples`. With
    `quality`, each LR input is first saved as JPEG at that quality (degrade.jpeg), as a messenger
    sends it; the original stays the reference."""
    s = net.scale
    rows, pictures = [], {}
    for i, path in enumerate(paths):
        content, _ = content_and_alpha(decode_image(path, str(path)))
        gray = content.mode == "L"  # a greyscale original is its own Y, as the literature scores it
        hr = crop_to_multiple(content.convert("RGB"), s)
        # the scale's border is cut from each side, and SSIM's window is 11 pixels
        if min(hr.size) - 2 * s < 11:
            raise SrctlError(
                f"{path}: {content.width}x{content.height} is too small to score at x{s}"
            )
        lr = downscale(hr, s) if quality is None else jpeg(downscale(hr, s), quality)
        sr, bicubic = upscale_image(net, lr), lr.resize(hr.size, Image.Resampling.BICUBIC)
        rows.append((*score(hr, sr, s, gray), *score(hr, bicubic, s, gray)))
        if i < samples:
            strip = Image.new("RGB", (hr.width * 3, hr.height))
            for j, part in enumerate((bicubic, sr, hr)):
                strip.paste(part, (j * hr.width, 0))
            pictures[f"{path.stem}_bicubic_sr_hr"] = strip
    mean = np.mean(rows, axis=0)
    metrics = dict(
        zip(("psnr", "ssim", "bicubic_psnr", "bicubic_ssim"), map(float, mean), strict=True)
    )
    metrics["psnr_gain"] = metrics["psnr"] - metrics["bicubic_psnr"]
    return metrics, pictures


def main() -> None:
    params, where = P.load(), P.paths()
    images = sorted((where.dataset / "images" / "test").glob("*.jpg"))
    images = images[: params.evaluate.max_images or None]
    if not images:
        raise SrctlError("data/raw/BSDS300/images/test: no images; run the download stage first")
    net = M.load(where.model, pick_device())
    # a real model is scored (and made champion) on the pictures it is for: messengers' JPEGs
    quality = MESSENGER_QUALITY if params.train.degradation == "real" else None
    metrics, pictures = evaluate(net, images, params.evaluate.samples, quality)
    metrics["images"] = len(images)
    write_json(where.metrics / "evaluate.json", metrics)
    trained_by = registry.read_run(where.run_file)["run_id"]
    logged = registry.log_evaluation(trained_by, metrics, pictures, params.flat("evaluate"))
    print(
        f"evaluate: x{net.scale} on {len(images)} BSDS300 test images"
        + (f" (LR as JPEG q{quality})" if quality else "")
        + ": "
        f"PSNR {metrics['psnr']:.2f} dB (bicubic {metrics['bicubic_psnr']:.2f}), "
        f"SSIM {metrics['ssim']:.4f} (bicubic {metrics['bicubic_ssim']:.4f})"
    )
    if note := registry.evaluation_note(logged, trained_by):
        print(f"evaluate: {note}")


if __name__ == "__main__":
    run_main(main)
