import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from srctl import model as M
from srctl import train as T
from srctl.errors import SrctlError
from srctl.prepare import load_split

from conftest import tiny_params


def test_patches_are_aligned_with_their_hr_blocks(prepared_dir):
    import random

    import torch.nn.functional as F

    data, _ = load_split(prepared_dir, "train")
    gen = torch.Generator().manual_seed(1)
    a, b = T.sample_patches(data["lr"], data["hr"], 16, 7, 3, gen, random.Random(1))
    assert a.shape == (16, 1, 7, 7) and b.shape == (16, 1, 21, 21)
    # each LR pixel is (nearly) the mean of its 3x3 HR block; a one-pixel shift would break that
    assert (F.avg_pool2d(b, 3) - a).abs().mean() < 0.02
    assert (F.avg_pool2d(b, 3)[..., 1:] - a[..., :-1]).abs().mean() > 2 * (
        F.avg_pool2d(b, 3) - a
    ).abs().mean()


def test_every_ddp_rank_draws_its_own_patches(prepared_dir):
    data, _ = load_split(prepared_dir, "train")

    def draw(rank):
        streams = T.rank_streams(0, rank, torch.device("cpu"))
        return T.sample_patches(data["lr"], data["hr"], 8, 17, 3, *streams)[0]

    assert not torch.equal(draw(0), draw(1))
    assert torch.equal(draw(1), draw(1))  # each rank's stream is reproducible


def _run(params, prepared_dir, tmp_path, name):
    out = tmp_path / name
    summary = T.train(params, prepared_dir, out / "model", out / "metrics", out / "run.json")
    return summary, out


def test_training_logs_to_mlflow_and_is_reproducible(prepared_dir, tmp_path, mlflow_store):
    import mlflow

    params = tiny_params(precision="fp32")
    s1, out1 = _run(params, prepared_dir, tmp_path, "a")
    s2, out2 = _run(params, prepared_dir, tmp_path, "b")
    w1, w2 = M.load(out1 / "model").state_dict(), M.load(out2 / "model").state_dict()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # same seed, same weights
    assert s1["final_train_loss"] == s2["final_train_loss"]

    run_id = json.loads((out1 / "run.json").read_text())["run_id"]
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == str(params.train.lr) and run.data.params["scale"] == "3"
    assert len(run.data.tags["dataset_sha256"]) == 64
    assert [m.step for m in client.get_metric_history(run_id, "test_psnr")] == [1, 2]
    assert (out1 / "metrics" / "train_log.csv").read_text().startswith("epoch,train_loss,test_psnr")
    # loadable back with MLflow (into the test's folder: without dst_path MLflow leaves a temp dir)
    loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/model", dst_path=str(tmp_path / "loaded"))
    assert loaded.metadata.flavors["python_function"]["loader_module"] == "srctl.infer"


def test_loss_falls(prepared_dir, tmp_path, mlflow_store):
    summary, out = _run(
        tiny_params(epochs=3, steps_per_epoch=40, batch_size=16), prepared_dir, tmp_path, "c"
    )
    rows = (out / "metrics" / "train_log.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[1]) for r in rows]
    assert losses[-1] < losses[0]


def test_failed_training_marks_the_run_failed(prepared_dir, tmp_path, mlflow_store):
    import mlflow

    with pytest.raises(SrctlError, match="training loss is (nan|inf)"):
        _run(tiny_params(lr=1e30, lr_final=1e30, precision="fp32"), prepared_dir, tmp_path, "d")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert list(runs["status"]) == ["FAILED"]
    assert not (tmp_path / "d" / "model").exists()  # no half-trained model left as if it were done


def test_patch_larger_than_images_is_refused(prepared_dir, tmp_path, mlflow_store):
    with pytest.raises(SrctlError, match="patch_size"):
        _run(tiny_params(patch_size=500), prepared_dir, tmp_path, "e")


def test_data_prepared_for_another_degradation_is_refused(prepared_dir, tmp_path, mlflow_store):
    with pytest.raises(SrctlError, match="prepared for train.degradation clean, params say real"):
        _run(tiny_params(degradation="real"), prepared_dir, tmp_path, "f")


def test_init_starts_from_a_logged_model_and_names_its_run_the_parent(
    prepared_dir, tmp_path, mlflow_store
):
    """train.init (fine-tuning): with a learning rate of 0 the model that comes out is the one it
    started from, so the weights were loaded; the new run is the source run's child in MLflow."""
    import mlflow

    s, source = _run(tiny_params(epochs=1), prepared_dir, tmp_path, "source")
    source_id = json.loads((source / "run.json").read_text())["run_id"]
    frozen = tiny_params(epochs=1, init=source_id, lr=0.0, lr_final=0.0, precision="fp32")
    _, tuned = _run(frozen, prepared_dir, tmp_path, "tuned")
    w0, w1 = M.load(source / "model").state_dict(), M.load(tuned / "model").state_dict()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    run = mlflow.MlflowClient().get_run(json.loads((tuned / "run.json").read_text())["run_id"])
    assert run.data.tags["mlflow.parentRunId"] == source_id
    assert run.data.params["train.init"] == source_id and run.info.run_name.endswith("finetuned")
    # a model of another network, or a name that resolves to nothing: one line, before training
    with pytest.raises(
        SrctlError, match=r"train.init .*: an x3 contrast model, params train an x3 seed one"
    ):
        _run(tiny_params(init=source_id, arch="seed"), prepared_dir, tmp_path, "g")
    with pytest.raises(
        SrctlError,
        match=r"train.init espcn-x3@champion: cannot load model models:/espcn-x3@champion",
    ):
        _run(tiny_params(init="espcn-x3@champion"), prepared_dir, tmp_path, "h")
    assert len(mlflow.search_runs(search_all_experiments=True)) == 2  # no run for either


# --- interruption and resume, with real signals to a real `python -m srctl.train`
# ----------------------

# Epochs long enough (a second or more) that the signal, sent within 10 ms of epoch 1's checkpoint,
# lands in epoch 2; short enough that four runs of it and a DDP trio stay a small part of CI.
RESUMABLE = {
    "epochs": 3,
    "steps_per_epoch": 100,
    "batch_size": 16,
    "patch_size": 17,
    "compile": "never",
}


def _project(root, prepared_dir, **train):
    """A project folder with the repo's dvc.yaml, tiny params and the prepared data."""
    import shutil

    import yaml

    from conftest import ROOT

    (root / "data").mkdir(parents=True)
    shutil.copytree(prepared_dir, root / "data" / "prepared")
    shutil.copy(ROOT / "dvc.yaml", root)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update({**RESUMABLE, **train})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
        "PYTHONUNBUFFERED": "1",
    }
    return root, env


def _train_cmd(root, env):
    return subprocess.run(
        [sys.executable, "-m", "srctl.train"], cwd=root, env=env, capture_output=True, text=True
    )


def _interrupt_after_epoch_1(root, env, sig) -> tuple[int, str, str]:
    """Start the stage, send `sig` once epoch 1 is checkpointed (mid-epoch 2); its exit code and
    output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "srctl.train"],
        cwd=root,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # started from a background job (`cmd &`, nohup), the child would inherit SIGINT as
        # ignored and Python would keep it so: Ctrl-C in a terminal reaches it with the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    checkpoint = root / "models" / T.CHECKPOINT
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def uninterrupted(prepared_dir, tmp_path_factory):
    root, env = _project(tmp_path_factory.mktemp("ref") / "p", prepared_dir)
    res = _train_cmd(root, env)
    assert res.returncode == 0, res.stderr
    # progress people can plan with: every epoch says how long it took and how long the rest will
    # take
    epoch_line = (
        r"^epoch 1/3: loss [\d.]+, test PSNR [\d.]+ dB, [\d.]+ s/epoch, (\d+ min )?\d+ s left$"
    )
    assert re.search(epoch_line, res.stdout, re.M), res.stdout
    # and what runs before the first of them (minutes on a CPU with compiling)
    assert re.search(r"^train: 3 epochs of \d+ steps \(batch \d+, cpu, \w+\)$", res.stdout, re.M)
    return root


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "crash"]
)
def test_interrupted_training_resumes_to_the_same_result(
    prepared_dir, tmp_path, uninterrupted, sig
):
    import mlflow

    root, env = _project(tmp_path / "p", prepared_dir)
    checkpoint = root / "models" / T.CHECKPOINT
    returncode, out, err = _interrupt_after_epoch_1(root, env, sig)
    assert returncode != 0, out
    assert checkpoint.exists() and not (root / "models" / "espcn").exists()
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs(client.get_experiment_by_name("srctl").experiment_id)
    # SIGKILL can't be caught
    assert run.info.status == ("RUNNING" if sig == signal.SIGKILL else "KILLED")
    if sig != signal.SIGKILL:
        assert err.strip().splitlines()[-1].startswith("error: interrupted")

    res = _train_cmd(root, env)  # what `dvc repro` runs again
    assert res.returncode == 0, res.stderr
    assert "train: resuming after epoch" in res.stdout
    assert not checkpoint.exists()
    ref = uninterrupted / "models"
    assert (root / "models" / "espcn" / M.WEIGHTS).read_bytes() == (
        ref / "espcn" / M.WEIGHTS
    ).read_bytes()
    psnr = json.loads((root / "metrics" / "train.json").read_text())["final_test_psnr"]
    assert psnr == pytest.approx(
        json.loads((uninterrupted / "metrics" / "train.json").read_text())["final_test_psnr"],
        abs=0.01,
    )
    resumed = client.get_run(run.info.run_id)  # the same MLflow run carries on
    assert resumed.info.status == "FINISHED" and "train_seconds" in resumed.data.metrics


def test_a_checkpoint_of_other_params_or_damaged_is_not_resumed(
    prepared_dir, tmp_path, mlflow_store, capsys
):
    params = tiny_params()
    (tmp_path / "x").mkdir()
    ckpt = tmp_path / "x" / T.CHECKPOINT
    torch.save({"fingerprint": "other", "epoch": 1}, ckpt)
    _run(params, prepared_dir, tmp_path, "x")
    assert "made with other params or data; starting over" in capsys.readouterr().out
    ckpt.write_bytes(b"garbage")
    _run(params, prepared_dir, tmp_path, "x")
    assert "ignoring unreadable checkpoint" in capsys.readouterr().out
    assert not ckpt.exists()


@pytest.mark.parametrize("scale, arch", [(2, "paper"), (4, "seed")])
def test_other_scales_and_the_paper_network_train(raw_dir, tmp_path, mlflow_store, scale, arch):
    import dataclasses

    from srctl.prepare import prepare

    params = dataclasses.replace(tiny_params(arch=arch), scale=scale)
    prepare(raw_dir, tmp_path / "prepared", params)
    summary, out = _run(params, tmp_path / "prepared", tmp_path, "run")
    net = M.load(out / "model")
    assert (net.scale, net.activation) == (scale, "tanh" if arch == "paper" else "relu")
    assert net(torch.rand(1, 1, 6, 6)).shape == (1, 1, 6 * scale, 6 * scale)
    assert 10 < summary["final_test_psnr"] < 50


def test_the_default_compiled_training(prepared_dir, tmp_path):
    """train.compile: auto, in its own process as the stage runs (CPython 3.11.7 can fail a later
    `ast.parse` in a process that ran torch.compile: pytest's own imports would hit it)."""
    root, env = _project(tmp_path / "p", prepared_dir, epochs=1, steps_per_epoch=30, compile="auto")
    res = _train_cmd(root, env)
    assert res.returncode == 0, res.stderr
    assert "No CUDA runtime" not in res.stderr  # torch's C++ builder warns so on CPU-only machines
    summary = json.loads((root / "metrics" / "train.json").read_text())
    assert summary["compiled"] is True  # CI's machines have the C++ compiler Inductor needs
    assert M.load(root / "models" / "espcn")(torch.rand(1, 1, 5, 5)).shape == (1, 1, 15, 15)


@pytest.mark.parametrize("how", ["train.processes", "torchrun"])
def test_ddp_training_with_two_cpu_processes(prepared_dir, tmp_path, how):
    """DDP on CPU (gloo) as the README says: `train.processes: 2` in params.yaml (what the DVC stage
    runs), or `torchrun --nproc_per_node=2 -m srctl.train`. One MLflow run, one model, and the loss
    falls."""
    import mlflow

    processes = 2 if how == "train.processes" else 1  # under torchrun, torchrun decides
    root, env = _project(
        tmp_path / "p",
        prepared_dir,
        epochs=3,
        steps_per_epoch=40,
        batch_size=16,
        processes=processes,
    )
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2"]
    cmd = (
        [*torchrun, "-m", "srctl.train"]
        if how == "torchrun"
        else [sys.executable, "-m", "srctl.train"]
    )
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((root / "metrics" / "train.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 120
    losses = [
        float(r.split(",")[1])
        for r in (root / "metrics" / "train_log.csv").read_text().splitlines()[1:]
    ]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert res.stdout.count("epoch 3/3") == 1  # rank 0 alone reports
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs(client.get_experiment_by_name("srctl").experiment_id)
    assert run.info.status == "FINISHED" and run.data.metrics["processes"] == 2
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]
    assert M.load(root / "models" / "espcn")(torch.rand(1, 1, 5, 5)).shape == (1, 1, 15, 15)
    assert not (root / "models" / T.CHECKPOINT).exists()


def test_an_interrupted_ddp_run_resumes_to_the_same_result(prepared_dir, tmp_path):
    """SIGTERM to the stage running 2 DDP ranks: torchrun stops both, the run is KILLED, the
    checkpoint (with both ranks' random streams) stays; the next run resumes to the uninterrupted
    run's weights."""
    import mlflow

    ref, env = _project(tmp_path / "ref", prepared_dir, processes=2)
    assert _train_cmd(ref, env).returncode == 0
    root, env = _project(tmp_path / "p", prepared_dir, processes=2)
    returncode, out, err = _interrupt_after_epoch_1(root, env, signal.SIGTERM)
    assert returncode != 0 and (root / "models" / T.CHECKPOINT).exists(), out + err
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs(client.get_experiment_by_name("srctl").experiment_id)
    assert run.info.status == "KILLED"

    res = _train_cmd(root, env)
    assert res.returncode == 0, res.stderr
    assert "train: resuming after epoch" in res.stdout
    weights = Path("models") / "espcn" / M.WEIGHTS
    assert (root / weights).read_bytes() == (ref / weights).read_bytes()
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
