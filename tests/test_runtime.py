"""The onnxruntime engine: the same pictures as PyTorch's fp32 upscale, chosen where it suits, and
a start without PyTorch."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from srctl import model as M
from srctl import runtime
from srctl.files import cache_dir
from srctl.pictures import to_array
from srctl.upscale import upscale_batch

from conftest import BSDS300, flat_error


@pytest.fixture(scope="module")
def contrast_dir(tmp_path_factory):
    """A contrast network (the default's) with large random weights, saved as a model folder."""
    torch.manual_seed(0)
    net = M.ESPCN.named("contrast", 3).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp("contrast")
    M.save(net, folder)
    return folder


def test_every_kind_of_picture_equals_pytorch_within_a_level(contrast_dir):
    """L, LA, RGB and RGBA, whole and in tiles (a graph per kind, exported once into the cache)."""
    net = M.load(contrast_dir)
    photo = Image.open(BSDS300 / "images" / "test" / "3096.jpg").crop((100, 80, 203, 151))
    engine = runtime.OnnxEngine(contrast_dir)
    for mode in ("L", "LA", "RGB", "RGBA"):
        x = to_array(photo.convert(mode))[None]
        want = upscale_batch(net, torch.from_numpy(x)).numpy().astype(int)
        for tile in (512, 16):
            engine.tile = tile
            got = engine(x).astype(int)
            assert got.shape == want.shape
            assert np.abs(got - want).max() <= 1 and (got != want).mean() < 0.001
    assert engine.scale == 3 and engine.halo == 5
    assert len(list(cache_dir("onnx").glob(f"{engine.digest}-c*.onnx"))) == 4


def test_flat_regions_keep_their_level(contrast_dir):
    engine = runtime.OnnxEngine(contrast_dir)
    run = lambda x: torch.from_numpy(engine(x.numpy()))  # noqa: E731
    assert flat_error(M.load(contrast_dir), run) <= 1


def test_it_runs_on_cpus_without_amx_and_where_fp32_is_asked_for(monkeypatch):
    for amx, gpu, args, want in [
        (False, False, (None, None, None), True),  # AVX2 only, or AVX512-BF16 without AMX
        (True, False, (None, None, None), False),  # AMX: PyTorch in bf16
        (True, False, (None, "fp32", None), True),  # unless fp32 is asked for
        (False, True, (None, None, None), False),  # a GPU: PyTorch on it
        (True, True, ("cpu", "fp32", None), True),
        (False, False, ("cuda", None, None), False),
        (False, False, (None, "bf16", None), False),
        (False, False, (None, None, (640, None)), False),  # --size: PyTorch resizes
    ]:
        monkeypatch.setattr(runtime, "_amx", lambda amx=amx: amx)
        monkeypatch.setattr(runtime, "_accelerator", lambda gpu=gpu: gpu)
        assert runtime.suits(*args) is want, (amx, gpu, args)
    monkeypatch.undo()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # torch held to AVX2 uses no AMX either
    assert runtime._amx() is False


def test_srctl_infer_starts_without_pytorch(tmp_path, photo, contrast_dir, monkeypatch):
    """The first run exports the graph (with PyTorch); the next ones never import it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no graph from other tests
    script = (
        "import sys\nfrom srctl.cli import main\nsys.argv = ['srctl', *sys.argv[1:]]\n"
        "try:\n    main()\nfinally:\n    print('torch' in sys.modules, file=sys.stderr)\n"
    )
    # --device cpu: on a machine with a GPU, srctl infer would pick it (and PyTorch)
    args = [
        "infer",
        "--fp32",
        "--device",
        "cpu",
        "--model-dir",
        str(contrast_dir),
        str(photo),
        "-q",
        "--force",
    ]
    for first in (True, False):
        res = subprocess.run(
            [sys.executable, "-c", script, *args], cwd=tmp_path, capture_output=True, text=True
        )
        assert res.returncode == 0, res.stderr
        assert res.stderr.strip().splitlines()[-1] == str(first)
    got = np.asarray(Image.open(tmp_path / "photo_x3.png"), dtype=int)
    img = Image.open(photo)
    want = upscale_batch(M.load(contrast_dir), torch.from_numpy(to_array(img))[None])[0]
    assert np.abs(got - want.permute(1, 2, 0).numpy()).max() <= 1
