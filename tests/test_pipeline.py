"""End to end: the real `dvc repro` in a temporary git repo, a real sqlite MLflow store at its root,
then the real `srctl infer --run-id` on a real photo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BSDS300, tiny_project, your_pictures


def dvc(cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("clone")
    tiny_project(repo)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "DVC_"))}
    env.update(SRCTL_DATA_MIRROR=str(BSDS300), PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    res = dvc(repo, env, "repro")
    assert res.returncode == 0, res.stdout + res.stderr
    return repo, env


def test_repro_writes_every_stage_output(repo):
    repo, env = repo
    for path in (
        "data/raw/BSDS300",
        "data/prepared/train.safetensors",
        "models/espcn/model.safetensors",
        "metrics/train.json",
        "metrics/train_log.csv",
        "metrics/evaluate.json",
        "metrics/benchmark.json",
        "mlflow.db",
    ):
        assert (repo / path).exists(), path
    metrics = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert metrics["images"] == 3 and 20 < metrics["bicubic_psnr"] < 40
    bench = json.loads((repo / "metrics" / "benchmark.json").read_text())
    assert bench["scale"] == 3 and bench["Set14"] == {"images": 0} and bench["Set5"]["images"] == 5
    assert bench["Set5"]["bicubic_psnr"] == pytest.approx(30.40, abs=0.01)
    status = dvc(repo, env, "status")
    assert "up to date" in status.stdout  # a second `dvc repro` would do nothing


def test_run_is_complete_in_mlflow_and_registered(repo):
    repo, _ = repo
    import mlflow

    run_id = json.loads((repo / "models" / "mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {"train.lr", "train.epochs", "scale", "seed"} <= set(run.data.params)
    assert {
        "psnr",
        "ssim",
        "bicubic_psnr",
        "test_psnr",
        "train_loss",
        "train_seconds",
        "Set5/psnr",
        "Set5/bicubic_ssim",
    } <= set(run.data.metrics)
    assert run.data.tags["git_commit"] and len(run.data.tags["dataset_sha256"]) == 64
    samples = [a.path for a in client.list_artifacts(run_id, "samples")]
    assert len(samples) == 3
    assert run.info.artifact_uri.startswith((repo / "mlartifacts").as_uri())  # beside mlflow.db
    champion = client.get_model_version_by_alias("espcn-x3", "champion")
    assert champion.version == 1 and champion.run_id == run_id
    assert json.loads((repo / "models" / "registered.json").read_text())["promoted"] is True
    # what the MLflow UI shows: a run named for what ran, BSDS300 as its dataset, versions told
    # apart
    assert run.info.run_name == "x3-contrast-20"
    (used,) = run.inputs.dataset_inputs
    assert (
        used.dataset.name == "BSDS300"
        and used.dataset.digest == run.data.tags["dataset_sha256"][:16]
    )
    assert {t.key: t.value for t in used.tags}["content_sha256"] == run.data.tags["dataset_sha256"]
    assert champion.tags == {  # Set14 is absent here
        key: f"{run.data.metrics[key]:.2f}" for key in ("Set5/psnr", "Set5-jpeg50/psnr")
    }
    psnr = run.data.metrics["psnr"]
    assert champion.description.startswith(
        f"x3 contrast clean, 20 steps (run x3-contrast-20): BSDS300 test {psnr:.2f} dB"
    )


def test_infer_with_the_run_id_on_a_photo(repo, tmp_path, photo):
    repo, env = repo
    run_id = json.loads((repo / "models" / "mlflow_run.json").read_text())["run_id"]
    srctl = Path(sys.executable).parent / "srctl"
    res = subprocess.run(
        [srctl, "infer", "--run-id", run_id, str(photo)],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    out = tmp_path / "photo_x3.png"
    assert str(out) in res.stdout
    small, big = Image.open(photo).convert("RGB"), Image.open(out)
    assert big.size == (small.width * 3, small.height * 3) and big.mode == "RGB"
    # colours survive: the result is close to a bicubic upscale, channel by channel
    ref = np.asarray(small.resize(big.size, Image.Resampling.BICUBIC), dtype=float)
    got = np.asarray(big, dtype=float)
    assert np.abs(got.mean(axis=(0, 1)) - ref.mean(axis=(0, 1))).max() < 3
    # 20 training steps: near bicubic, not noise
    assert 10 * np.log10(255**2 / ((got - ref) ** 2).mean()) > 20

    # the default (champion of params.yaml's name) works too, with -o
    res = subprocess.run(
        [srctl, "infer", str(photo), "-o", str(tmp_path / "c.png")],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert Image.open(tmp_path / "c.png").size == big.size


def test_make_real_registers_its_own_model_scored_on_jpeg_inputs(repo, tmp_path, photo):
    """`make real`'s command: a model of degraded pictures, in its own registered model (the clean
    champion stays), its run marked as such, scored on JPEG q50 inputs; then used by name. Its
    `--temp` (as `--queue` does) runs in .dvc/tmp/exps/...: its params and outputs are the copy's,
    the workspace is left alone, and the run lands in the repo's mlflow.db and mlartifacts."""
    repo, env = repo
    import mlflow

    before = (repo / "models" / "mlflow_run.json").read_text()
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    command = makefile.split("\nreal: install\n\t", 1)[1].splitlines()[0].split()
    assert command[:4] == ["dvc", "exp", "run", "--temp"]
    res = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (repo / "models" / "mlflow_run.json").read_text() == before
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    real = client.get_model_version_by_alias("espcn-x3-real", "champion")
    run = client.get_run(real.run_id)
    assert run.data.params["train.degradation"] == "real" and run.data.tags["degradation"] == "real"
    assert run.info.artifact_uri.startswith((repo / "mlartifacts").as_uri())
    assert run.data.metrics["Set5/images"] == 5  # set folders relative to the repo, not to the copy
    assert "Set5-jpeg50/psnr" in run.data.metrics and "LR as JPEG q50" in real.description
    clean_id = json.loads((repo / "models" / "mlflow_run.json").read_text())["run_id"]
    clean = client.get_run(clean_id).data.metrics
    # its BSDS300 score is on JPEG inputs: bicubic from them is well below bicubic from clean ones
    assert run.data.metrics["bicubic_psnr"] < clean["bicubic_psnr"] - 0.5
    assert client.get_model_version_by_alias("espcn-x3", "champion").run_id == clean_id
    srctl = Path(sys.executable).parent / "srctl"
    out = tmp_path / "real.png"
    res = subprocess.run(
        [srctl, "infer", "--model", "espcn-x3-real@champion", str(photo), "-o", str(out)],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert Image.open(out).size == tuple(3 * s for s in Image.open(photo).size)


def test_fine_tuning_the_champion_on_your_own_pictures(repo, tmp_path):
    """README, "Your own pictures": `dvc add` a folder under data/extra, and one `dvc exp run`
    fine-tunes the champion on BSDS300 plus its tiles; a bad folder stops at prepare, in one line,
    before any training. In a copy of the project: its git history changes."""
    repo, env = repo
    import mlflow

    proj = tmp_path / "proj"
    shutil.copytree(repo, proj, symlinks=True)
    run = lambda *a: subprocess.run(a, cwd=proj, env=env, capture_output=True, text=True)  # noqa: E731
    your_pictures(proj)
    assert run("dvc", "add", "data/extra/mine").returncode == 0
    assert "data/extra" in run("dvc", "status", "prepare").stdout  # prepare depends on it
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "my pictures")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{proj}/mlflow.db")
    experiment = client.get_experiment_by_name("srctl").experiment_id
    champion = client.get_model_version_by_alias("espcn-x3", "champion").run_id
    before = len(client.search_runs(experiment))

    res = run("dvc", "exp", "run", "--temp", "-S", "prepare.extra_train=[data/extra/nope]")
    assert res.returncode != 0
    assert "error: prepare.extra_train: data/extra/nope: no such folder\n" in res.stderr
    assert len(client.search_runs(experiment)) == before  # no training started

    res = run(
        *("dvc", "exp", "run", "--temp", "-n", "mine", "-S", "train.init=espcn-x3@champion"),
        *("-S", "prepare.extra_train=[data/extra/mine]"),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pairs from 9 train (with 2 of your pictures, as tiles)" in res.stdout  # 4 + 5 tiles
    assert "Warning" not in res.stdout + res.stderr  # MLflow's on the pictures' dataset source
    (tuned,) = client.search_runs(experiment, filter_string="tags.dvc_exp_name = 'mine'")
    assert tuned.info.status == "FINISHED" and tuned.data.tags["mlflow.parentRunId"] == champion
    inputs = {d.dataset.name for d in tuned.inputs.dataset_inputs}
    assert inputs == {"BSDS300", "extra_train: data/extra/mine"}


def test_a_queued_sweep_runs_in_parallel_each_experiment_its_own_mlflow_run(repo):
    """`dvc exp run --queue -S train.lr=a,b` then `dvc queue start -j 2`, as the README says."""
    repo, env = repo
    import time

    import mlflow

    res = dvc(repo, env, "exp", "run", "--queue", "-S", "train.lr=0.0011,0.0013")
    assert res.returncode == 0, res.stdout + res.stderr
    names = [
        line.split("'")[1]
        for line in res.stdout.splitlines()
        if line.startswith("Queued experiment")
    ]
    assert len(names) == 2
    # the workers outlive `dvc queue start`: they must not hold our pipes open (the call would never
    # return)
    assert (
        subprocess.run(
            ["dvc", "queue", "start", "-j", "2"],
            cwd=repo,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ).returncode
        == 0
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and any(
        s in dvc(repo, env, "queue", "status").stdout for s in ("Queued", "Running")
    ):
        time.sleep(2)
    status = dvc(repo, env, "queue", "status").stdout
    dvc(repo, env, "queue", "stop")
    assert all(f"{n}" in status for n in names) and "Failed" not in status, status
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    runs = client.search_runs(client.get_experiment_by_name("srctl").experiment_id)
    swept = {
        r.data.tags.get("dvc_exp_name"): r for r in runs if r.data.tags.get("dvc_exp_name") in names
    }
    assert sorted(r.data.params["train.lr"] for r in swept.values()) == ["0.0011", "0.0013"]
    assert all(
        r.info.status == "FINISHED" and "Set5/psnr" in r.data.metrics for r in swept.values()
    )


def test_fresh_clone_of_a_committed_result_trains_evaluates_and_registers_again(repo, tmp_path):
    """A clone has the committed dvc.lock and metrics but no data, models or MLflow store: every
    stage must run again, the MLflow side included (not only what DVC caches)."""
    repo, env = repo
    git = lambda *a, cwd=repo: subprocess.run(["git", *a], cwd=cwd, check=True, capture_output=True)  # noqa: E731
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "result")
    clone = tmp_path / "clone"
    git("clone", "-q", str(repo), str(clone))
    res = dvc(clone, env, "repro")
    assert res.returncode == 0, res.stdout + res.stderr
    for stage in ("download", "prepare", "train", "evaluate", "benchmark", "register"):
        assert f"Running stage '{stage}'" in res.stdout
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{clone}/mlflow.db")
    champion = client.get_model_version_by_alias("espcn-x3", "champion")
    assert champion.version == 1 and "psnr" in client.get_run(champion.run_id).data.metrics


def test_an_experiment_on_evaluate_params_leaves_the_training_run_and_champion_alone(repo):
    """`dvc exp run -S evaluate.max_images=1` reuses the cached training run: the new scores go to
    a run of their own under it, holding the params they were made with; the training run keeps
    its scores and the champion is not moved on a PSNR of other pictures."""
    repo, env = repo
    import mlflow

    trained = json.loads((repo / "models" / "mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    before = client.get_run(trained).data.metrics
    champion = client.get_model_version_by_alias("espcn-x3", "champion").version
    res = dvc(repo, env, "exp", "run", "--temp", "-n", "one-image", "-S", "evaluate.max_images=1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Running stage 'train'" not in res.stdout and "Running stage 'evaluate'" in res.stdout
    (evaluation,) = client.search_runs(
        client.get_experiment_by_name("srctl").experiment_id,
        filter_string="tags.dvc_exp_name = 'one-image'",
    )
    assert evaluation.data.tags["mlflow.parentRunId"] == trained
    assert evaluation.data.params["evaluate.max_images"] == "1"
    assert evaluation.data.metrics["images"] == 1 and "Set5/psnr" not in evaluation.data.metrics
    assert f"logged to run {evaluation.info.run_id}, an evaluation of run {trained}" in res.stdout
    after = client.get_run(trained).data.metrics
    assert after["psnr"] == before["psnr"] and after["images"] == before["images"] == 3
    assert client.get_model_version_by_alias("espcn-x3", "champion").version == champion


def test_infers_and_an_experiment_share_one_store_at_the_same_time(repo, tmp_path):
    """Two `srctl infer` loops and a `dvc exp run -S ...` (as the README says) write and read one
    mlflow.db concurrently; the experiment is a new run tagged with its name, a new model version,
    and its numbers are what `dvc metrics diff` shows against the commit's."""
    repo, env = repo
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    versions = len(client.search_model_versions("name='espcn-x3'"))
    srctl = Path(sys.executable).parent / "srctl"
    exp = subprocess.Popen(
        ["dvc", "exp", "run", "-n", "concurrent", "-S", "train.lr=0.003"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    photos = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for p in photos:
        shutil.copy(BSDS300 / "images" / "test" / "3096.jpg", p)
    rounds = 0
    # at least one round, and more while the experiment runs (at most 6 of two parallel calls);
    # NAME@ALIAS is looked up and downloaded through the store by every call (a run id would be
    # served from the model cache after the first)
    while rounds == 0 or (exp.poll() is None and rounds < 6):
        calls = [
            subprocess.Popen(
                [srctl, "infer", "--model", "espcn-x3@champion", str(p), "--force"],
                cwd=repo,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for p in photos
        ]
        for c in calls:
            _, err = c.communicate(timeout=300)
            assert c.returncode == 0, err
        rounds += 1
    out, _ = exp.communicate(timeout=600)
    assert exp.returncode == 0, out
    (run,) = client.search_runs(
        client.get_experiment_by_name("srctl").experiment_id,
        filter_string="tags.dvc_exp_name = 'concurrent'",
    )
    assert run.info.status == "FINISHED" and run.data.params["train.lr"] == "0.003"
    assert "psnr" in run.data.metrics
    assert len(client.search_model_versions("name='espcn-x3'")) == versions + 1
    diff = dvc(repo, env, "metrics", "diff", "--json")
    changed = json.loads(diff.stdout)["metrics/benchmark.json"]  # the experiment's vs the commit's
    assert changed["Set5.psnr"]["new"] == pytest.approx(run.data.metrics["Set5/psnr"])
