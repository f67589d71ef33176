"""Shared fixtures: the real datasets from ../shared/datasets, a real sqlite MLflow store a test."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from srctl import params as P

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
BSDS300 = DATASETS / "BSDS300"


def pytest_sessionstart(session):
    # fetched models are cached under XDG_CACHE_HOME: keep the tests' cache out of the user's (and
    # remove it after the session: each run made one more in the temp dir)
    import atexit
    import getpass
    import tempfile

    os.environ["XDG_CACHE_HOME"] = cache = tempfile.mkdtemp(prefix="srctl-test-cache-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    # Children get a temp dir that goes with the session: torchrun leaves its log folders behind,
    # and processes the tests kill leave MLflow's. Torch's compile cache stays where it was (warm),
    # and pytest's own tmp_path too (tempfile.gettempdir() has cached it in this process).
    system_tmp = tempfile.gettempdir()
    os.environ.setdefault(
        "TORCHINDUCTOR_CACHE_DIR", os.path.join(system_tmp, f"torchinductor_{getpass.getuser()}")
    )
    os.environ["TMPDIR"] = tempfile.mkdtemp(prefix="srctl-test-tmp-")
    atexit.register(shutil.rmtree, os.environ["TMPDIR"], ignore_errors=True)
    # The datasets are part of the test environment: a missing copy is an error, never a skip.
    if not (BSDS300 / "images" / "train").is_dir():
        raise pytest.UsageError(
            f"{BSDS300} is missing: tests need the shared dataset copy beside the repo"
        )


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)  # the run's artifacts land in tmp_path/mlruns, not in the repo
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return uri


@pytest.fixture
def photo(tmp_path) -> Path:
    """A real photo (BSDS300 test 3096, 481x321) in the test's own folder."""
    path = tmp_path / "photo.jpg"
    shutil.copy(BSDS300 / "images" / "test" / "3096.jpg", path)
    return path


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory) -> Path:
    """data/raw with a few BSDS300 images (4 train, 2 test), laid out as the download stage leaves
    it."""
    raw = tmp_path_factory.mktemp("raw")
    for split, n in (("train", 4), ("test", 2)):
        dst = raw / "BSDS300" / "images" / split
        dst.mkdir(parents=True)
        for src in sorted((BSDS300 / "images" / split).glob("*.jpg"))[:n]:
            shutil.copy(src, dst)
    return raw


@pytest.fixture(scope="session")
def prepared_dir(raw_dir, tmp_path_factory) -> Path:
    from srctl.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare(raw_dir, out, P.Params())
    return out


@pytest.fixture
def serve(tmp_path):
    """Serve the test's folder over HTTP on 127.0.0.1; yields a function name -> URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield lambda name: f"http://127.0.0.1:{server.server_port}/{name}"
    server.shutdown()
    server.server_close()


def srctl_cli(*args, cwd):
    """The real `srctl` command line, in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "srctl.cli", *args], cwd=cwd, capture_output=True, text=True
    )


TINY = {
    "prepare": {"max_train_images": 4, "max_test_images": 2},
    "train": {
        "epochs": 1,
        "steps_per_epoch": 20,
        "batch_size": 16,
        "patch_size": 17,
        "lr": 0.001,
        "compile": "never",
    },
    "evaluate": {"max_images": 3, "samples": 3},
}


def tiny_project(dst: Path) -> None:
    """The project's files as git sees them (tracked or not ignored), with TINY params, in a fresh
    git repo."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dst / name)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    for group, values in TINY.items():
        params[group].update(values)
    # relative to the repo, as in params.yaml (and `dvc exp run --temp` works in a copy elsewhere)
    params["benchmark"]["sets"] = {
        "Set5": os.path.relpath(DATASETS / "Set5", dst),
        "Set14": "../no-such-set",
    }
    (dst / "params.yaml").write_text(yaml.safe_dump(params))
    git = lambda *a: subprocess.run(["git", *a], cwd=dst, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny")


def your_pictures(root: Path) -> Path:
    """data/extra/mine under a project `root`: a 1000x700 picture (2 x 2 tiles of 480x321) and a
    portrait one (turned to landscape: one tile), both made of real photos."""
    from PIL import Image

    photos = [Image.open(p).convert("RGB") for p in sorted(BSDS300.glob("images/test/*.jpg"))[:4]]
    big = Image.new("RGB", (1000, 700))
    for k, img in enumerate(photos):
        big.paste(img.crop((0, 0, 500, 350)).resize((500, 350)), (500 * (k % 2), 350 * (k // 2)))
    mine = root / "data" / "extra" / "mine"
    mine.mkdir(parents=True)
    big.save(mine / "big.png")
    photos[0].crop((0, 0, 481, 321)).transpose(Image.Transpose.ROTATE_270).save(mine / "tall.jpg")
    (mine / "notes.txt").write_text("not a picture: ignored")
    return mine


def tiny_params(**train) -> P.Params:
    """Default params with a training run of a few seconds (eager: compiling alone takes ~20 s)."""
    base = P.load(ROOT / "params.yaml")
    t = dataclasses.replace(
        base.train,
        **{"epochs": 2, "steps_per_epoch": 5, "batch_size": 8, "compile": "never", **train},
    )
    return dataclasses.replace(base, train=t)


@pytest.fixture(scope="module")
def logged_model_store(tmp_path_factory):
    """A real sqlite MLflow store (folder, run id) holding one run with an untrained srctl model."""
    from srctl import model as M
    from srctl import registry

    root = tmp_path_factory.mktemp("store")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    mp.chdir(root)
    M.save(M.ESPCN(3), root / "model")
    with registry.training_run(tiny_params(), "0" * 64) as run:
        registry.log_model(root / "model")
    mp.undo()
    os.environ["MLFLOW_TRACKING_URI"] = (
        f"sqlite:///{root}/mlflow.db"  # for the subprocesses of this module
    )
    yield root, run.info.run_id
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], probe: str, env: dict, cwd: Path) -> subprocess.Popen:
    """A real HTTP server process, once `probe` (a URL) answers 200; its output is in the failure
    message."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(probe, timeout=2).status_code == 200:
                return proc
        except requests.ConnectionError:
            time.sleep(0.5)
        if proc.poll() is not None:
            pytest.fail(f"{cmd[2:4]} exited: " + proc.stdout.read())
    proc.kill()
    pytest.fail(f"{cmd[2:4]} did not start: " + proc.stdout.read())


def serve_champion(env: dict, cwd: Path) -> tuple[subprocess.Popen, str]:
    """`srctl serve --model espcn-x3@champion` on a free local port, once it answers; (proc, url)"""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "srctl.cli", "serve", "--model", "espcn-x3@champion"]
    return start_server([*cmd, "--port", str(port)], f"{url}/ping", env, cwd), url


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def flat_error(net, run) -> int:
    """The largest change, in levels, of a flat region through `run` (uint8 [N, 3, h, w] tensors
    -> their upscale by the network `net`; upscale_batch, say): whole grey pictures
    of every level 0..255 (borders included), and two-level pictures (a vertical edge) away from
    the edge by the receptive field and bicubic's reach."""
    import torch

    from srctl.upscale import receptive_radius

    levels = torch.arange(256, dtype=torch.uint8)
    flat = levels[:, None, None, None].expand(256, 3, 14, 12).contiguous()
    worst = (run(flat).int() - flat[:, :, :1, :1].int()).abs().max()
    pairs = torch.tensor([[0, 255], [0, 40], [16, 235], [128, 131], [255, 200], [7, 0]])
    edge = pairs[:, :, None].repeat_interleave(10, dim=2)[:, None, None].expand(-1, 3, 14, 2, 10)
    edge = edge.reshape(len(pairs), 3, 14, 20).to(torch.uint8)
    out = run(edge).int()
    s, reach = net.scale, (receptive_radius(net) + 2) * net.scale
    for side, col in ((0, slice(0, 10 * s - reach)), (1, slice(10 * s + reach, None))):
        want = pairs[:, side, None, None, None].int()
        worst = max(worst, (out[..., col] - want).abs().max())
    return int(worst)
