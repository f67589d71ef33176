"""Inference on real photos, through the library and through the real `srctl` command."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from srctl import model as M
from srctl.errors import SrctlError
from srctl.infer import PyfuncModel, infer, output_paths, upscale_image

from conftest import BSDS300, DATASETS


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.jpg"
    shutil.copy(BSDS300 / "images" / "test" / "3096.jpg", path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    M.save(M.ESPCN(3), folder)
    return folder


def test_chroma_is_bicubic_and_size_is_scaled(photo):
    net = M.ESPCN(3).eval()
    img = Image.open(photo).convert("RGB").crop((0, 0, 90, 60))
    out = upscale_image(net, img)
    assert out.size == (270, 180) and out.mode == "RGB"
    _, cb, cr = out.convert("YCbCr").split()
    _, cb0, cr0 = img.convert("YCbCr").split()
    want = np.asarray(cb0.resize(out.size, Image.Resampling.BICUBIC), dtype=float)
    assert np.abs(np.asarray(cb, dtype=float) - want).mean() < 2  # up to YCbCr->RGB->YCbCr rounding


def test_output_paths_rules(tmp_path, photo):
    assert output_paths([photo], None, 3) == [tmp_path / "photo_x3.png"]
    other = tmp_path / "b.png"
    Image.new("RGB", (4, 4)).save(other)
    assert output_paths([photo, other], tmp_path / "out", 3) == [tmp_path / "out" / "photo.png", tmp_path / "out" / "b.png"]
    with pytest.raises(SrctlError, match="is an input"):
        output_paths([photo], photo, 3, force=True)
    with pytest.raises(SrctlError, match="exists; pass --force"):
        output_paths([photo], other, 3)


def test_infer_batch_keeps_going_past_a_bad_file(tmp_path, photo, model_dir):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    before = photo.read_bytes()
    failed = infer([photo, bad], model_dir, tmp_path / "out")
    assert failed == 1
    assert Image.open(tmp_path / "out" / "photo.png").size == (481 * 3, 321 * 3)
    assert not (tmp_path / "out" / "broken.png").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["photo.png"]  # no temp files left
    assert photo.read_bytes() == before


def test_pyfunc_predict_takes_and_returns_base64(model_dir):
    from srctl.infer import _load_pyfunc

    raw = (DATASETS / "Set5" / "baby.bmp").read_bytes()
    (b64_png,) = _load_pyfunc(str(model_dir)).predict([base64.b64encode(raw).decode()])
    out = Image.open(io.BytesIO(base64.b64decode(b64_png)))
    assert out.format == "PNG" and out.size == tuple(3 * s for s in Image.open(io.BytesIO(raw)).size)
    assert isinstance(PyfuncModel(M.ESPCN(3)), PyfuncModel)


def _srctl(*args, cwd):
    return subprocess.run([sys.executable, "-m", "srctl.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_cli_missing_file_is_one_line_error(tmp_path):
    res = _srctl("infer", "--run-id", "x", "nope.jpg", cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip() == "error: nope.jpg: no such file"


def test_cli_unknown_run_is_one_line_error(tmp_path, photo, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    res = _srctl("infer", "--run-id", "0123456789abcdef", str(photo), cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.startswith("error: cannot load model runs:/0123456789abcdef/model")
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "photo_x3.png").exists()
