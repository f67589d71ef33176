"""The pipeline on a team's engines, as the README says: a real `mlflow server` on 127.0.0.1 (sqlite
backend, artifacts proxied into a temp folder) holds the runs and the registry; a DVC remote (a
local folder) holds data and models, so a fresh clone gets the trained model with `dvc pull` instead
of retraining."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from PIL import Image

from conftest import BSDS300, free_port, serve_champion, start_server, stop_server, tiny_project

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{root}/server.db",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        url.rsplit(":", 1)[1],
        "--workers",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    proc = start_server(cmd, f"{url}/health", {**env, "MLFLOW_DISABLE_TELEMETRY": "true"}, root)
    yield url, root
    stop_server(proc)


@pytest.fixture(scope="module")
def team_repo(mlflow_server, tmp_path_factory):
    """The tiny pipeline run by `dvc repro` with MLFLOW_TRACKING_URI pointing at the server."""
    url, _ = mlflow_server
    repo = tmp_path_factory.mktemp("team")
    tiny_project(repo)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "DVC_"))}
    env.update(MLFLOW_TRACKING_URI=url, SRCTL_DATA_MIRROR=str(BSDS300), PATH=f"{BIN}:{env['PATH']}")
    res = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return repo, env


def _run_id(repo: Path) -> str:
    return json.loads((repo / "models" / "mlflow_run.json").read_text())["run_id"]


def test_the_pipeline_logs_and_registers_on_the_server(team_repo, mlflow_server):
    import mlflow

    repo, _ = team_repo
    url, root = mlflow_server
    # nothing embedded
    assert not (repo / "mlflow.db").exists() and not (repo / "mlartifacts").exists()
    client = mlflow.MlflowClient(tracking_uri=url)
    run = client.get_run(_run_id(repo))
    assert run.info.status == "FINISHED" and {"psnr", "train_loss", "Set5/psnr"} <= set(
        run.data.metrics
    )
    # proxied: clients need no storage access
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert client.get_model_version_by_alias("espcn-x3", "champion").run_id == run.info.run_id
    # the bytes landed on the server's side
    assert list((root / "artifacts").rglob("model.safetensors"))
    assert len(list((root / "artifacts").rglob("samples/*.png"))) == 3


def test_infer_loads_the_model_back_through_the_server(team_repo, tmp_path, photo):
    repo, env = team_repo
    env = {
        **env,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }  # nothing cached: the download goes through the server
    res = subprocess.run(
        [BIN / "srctl", "infer", "--run-id", _run_id(repo), str(photo)],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    small, big = Image.open(photo), Image.open(tmp_path / "photo_x3.png")
    assert big.size == (small.width * 3, small.height * 3)


def test_serve_the_champion_registered_on_the_server(team_repo, photo):
    repo, env = team_repo
    proc, url = serve_champion(env, repo)
    try:
        raw = photo.read_bytes()
        res = requests.post(
            f"{url}/invocations", json={"inputs": [base64.b64encode(raw).decode()]}, timeout=120
        )
    finally:
        stop_server(proc)
    assert res.status_code == 200, res.text
    out = Image.open(io.BytesIO(base64.b64decode(res.json()["predictions"][0])))
    assert out.size == (
        Image.open(io.BytesIO(raw)).width * 3,
        Image.open(io.BytesIO(raw)).height * 3,
    )


def test_a_fresh_clone_pulls_the_trained_model_from_a_dvc_remote(team_repo, tmp_path, photo):
    """`dvc remote add -d` + `dvc push` in the repo; a clone + `dvc pull` is up to date (nothing to
    retrain) and `srctl infer --model-dir models/espcn` works there with no MLflow store at all."""
    repo, env = team_repo

    def run(*a, cwd, env=env):
        return subprocess.run(a, cwd=cwd, env=env, capture_output=True, text=True)

    assert (
        run("dvc", "remote", "add", "-d", "team", str(tmp_path / "remote"), cwd=repo).returncode
        == 0
    )
    res = run("dvc", "push", cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr
    git = lambda *a, cwd=repo: subprocess.run(["git", *a], cwd=cwd, check=True, capture_output=True)  # noqa: E731
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "trained")
    clone = tmp_path / "clone"
    git("clone", "-q", str(repo), str(clone))

    offline = {
        k: v for k, v in env.items() if k not in ("MLFLOW_TRACKING_URI", "SRCTL_DATA_MIRROR")
    }
    offline["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    res = run("dvc", "pull", cwd=clone, env=offline)
    assert res.returncode == 0, res.stdout + res.stderr
    weights = "models/espcn/model.safetensors"
    assert (clone / weights).read_bytes() == (repo / weights).read_bytes()
    # would retrain if anything were missing or stale
    res = run("dvc", "repro", cwd=clone, env=offline)
    assert res.returncode == 0 and "Running stage" not in res.stdout, res.stdout + res.stderr

    # no store here: the error says what to do
    res = run(BIN / "srctl", "infer", str(photo), cwd=clone, env=offline)
    assert res.returncode == 1 and res.stderr.strip().endswith("--model-dir models/espcn"), (
        res.stderr
    )
    res = run(
        BIN / "srctl", "infer", "--model-dir", "models/espcn", str(photo), cwd=clone, env=offline
    )
    assert res.returncode == 0, res.stderr
    assert Image.open(tmp_path / "photo_x3.png").size == (
        Image.open(photo).width * 3,
        Image.open(photo).height * 3,
    )
