"""How LR pictures are made: the literature's clean downscale, the messenger's JPEG, and the random
chain of real degradations a `real` model trains on."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from srctl import degrade
from srctl import params as P

from conftest import BSDS300


@pytest.fixture(scope="module")
def hr():
    path = sorted((BSDS300 / "images" / "train").glob("*.jpg"))[0]
    return degrade.crop_to_multiple(Image.open(path).convert("RGB"), 3)


def _psnr(a: Image.Image, b: Image.Image) -> float:
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return 10 * np.log10(255**2 / (d**2).mean())


def test_jpeg_loses_more_at_lower_quality(hr):
    lr = degrade.downscale(hr, 3)
    q30, q50, q95 = (degrade.jpeg(lr, q) for q in (30, 50, 95))
    assert q50.size == lr.size and q50.mode == "RGB"
    assert _psnr(lr, q30) < _psnr(lr, q50) < _psnr(lr, q95) < 60
    assert np.array_equal(np.asarray(degrade.jpeg(lr)), np.asarray(q50))  # the messenger's q50


def test_real_chain_is_seeded_and_each_step_does_what_it_says(hr):
    cfg = P.Degrade()
    one = degrade.real(hr, 3, cfg, np.random.default_rng([0, 1, 2]))
    assert one.size == (hr.width // 3, hr.height // 3) and one.mode == "RGB"
    again = degrade.real(hr, 3, cfg, np.random.default_rng([0, 1, 2]))
    assert np.array_equal(np.asarray(one), np.asarray(again))
    # with every step off and the bicubic kernel, the chain is the clean downscale
    off = dataclasses.replace(cfg, blur=0.0, noise=0.0, jpeg=0.0, kernels=["bicubic"])
    clean = degrade.downscale(hr, 3)
    same = degrade.real(hr, 3, off, np.random.default_rng(0))
    assert np.array_equal(np.asarray(same), np.asarray(clean))
    # each step, alone and always on, moves the picture away from the clean one
    for step in (
        {"blur": 1.0, "blur_sigma": [1.5, 1.5]},
        {"noise": 1.0, "poisson": 0.0, "noise_sigma": [10.0, 10.0]},
        {"noise": 1.0, "poisson": 1.0, "poisson_peak": [200.0, 200.0]},
        {"jpeg": 1.0, "jpeg_quality": [30, 30]},
    ):
        got = degrade.real(hr, 3, dataclasses.replace(off, **step), np.random.default_rng(0))
        assert _psnr(clean, got) < 40, step
    # the kernels differ from each other
    area = degrade.real(hr, 3, dataclasses.replace(off, kernels=["area"]), np.random.default_rng(0))
    assert 30 < _psnr(clean, area) < 60
