"""Shared fixtures: the real datasets from ../shared/datasets, a real sqlite MLflow store per test."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from srctl import params as P

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
BSDS300 = DATASETS / "BSDS300"


def pytest_sessionstart(session):
    # fetched models are cached under XDG_CACHE_HOME: keep the tests' cache out of the user's
    import tempfile

    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="srctl-test-cache-")
    # The datasets are part of the test environment: a missing copy is an error, never a skip.
    if not (BSDS300 / "images" / "train").is_dir():
        raise pytest.UsageError(f"{BSDS300} is missing: tests need the shared dataset copy beside the repo")


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)  # the run's artifacts land in tmp_path/mlruns, not in the repo
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return uri


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory) -> Path:
    """data/raw with a few BSDS300 images (4 train, 2 test), laid out as the download stage leaves it."""
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
    prepare(raw_dir, out, 3, P.Prepare())
    return out


def srctl_cli(*args, cwd):
    """The real `srctl` command line, in a child process."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "srctl.cli", *args], cwd=cwd, capture_output=True, text=True)


def tiny_params(**train) -> P.Params:
    """Default params with a training run of a few seconds (eager: compiling alone takes ~20 s)."""
    base = P.load(ROOT / "params.yaml")
    t = dataclasses.replace(base.train, **{"epochs": 2, "steps_per_epoch": 5, "batch_size": 8, "compile": "never", **train})
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
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"  # for the subprocesses of this module
    yield root, run.info.run_id
    os.environ.pop("MLFLOW_TRACKING_URI", None)
