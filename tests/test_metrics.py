import numpy as np
import pytest
import torch
from PIL import Image

from srctl.metrics import psnr, score, y_studio


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


def test_score_of_an_image_against_itself_and_a_noisy_copy():
    rng = np.random.default_rng(0)
    hr = Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8))
    noisy = Image.fromarray(
        np.clip(np.asarray(hr, dtype=int) + rng.integers(-8, 9, (30, 30, 3)), 0, 255).astype(
            np.uint8
        )
    )
    assert score(hr, hr, 3) == (float("inf"), pytest.approx(1.0))
    p, s = score(hr, noisy, 3)
    assert 30 < p < 50 and 0 < s < 1
