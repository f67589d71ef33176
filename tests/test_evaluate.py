import numpy as np
import pytest
import torch
from PIL import Image

from srctl import model as M
from srctl.evaluate import evaluate, psnr, y_studio


def test_y_studio_matches_bt601():
    img = Image.new("RGB", (2, 1))
    img.putpixel((0, 0), (255, 255, 255))
    y = y_studio(img)
    assert y[0, 0] == pytest.approx(235.0) and y[0, 1] == pytest.approx(16.0)


def test_psnr_value_and_border():
    a = torch.zeros(1, 10, 10)
    b = torch.full((1, 10, 10), 5.0)
    b[:, 0, :] = 100  # only in the border: cut away
    assert float(psnr(a, b, 1)) == pytest.approx(10 * np.log10(255**2 / 25))


def test_evaluate_reports_model_and_bicubic(raw_dir):
    paths = sorted((raw_dir / "BSDS300" / "images" / "test").glob("*.jpg"))
    metrics, pictures = evaluate(M.ESPCN(3).eval(), paths, samples=1)
    assert 20 < metrics["bicubic_psnr"] < 40 and 0 < metrics["bicubic_ssim"] < 1
    assert metrics["psnr"] < metrics["bicubic_psnr"]  # an untrained network is worse than bicubic
    (name, strip), = pictures.items()
    assert strip.size in ((3 * 480, 321), (3 * 321, 480)) and name.endswith("_bicubic_sr_hr")
