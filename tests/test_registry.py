"""Registry behaviour against a real sqlite MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from srctl import model as M
from srctl import registry
from srctl.errors import SrctlError

from conftest import tiny_params


def _logged_run(tmp_path, psnr: float | None) -> str:
    """A finished run holding a logged srctl model and (optionally) an evaluation PSNR."""
    folder = tmp_path / f"m{psnr}"
    M.save(M.ESPCN(3), folder)
    with registry.training_run(tiny_params(), "0" * 64) as run:
        uri = registry.log_model(folder)
    if psnr is not None:
        registry.log_evaluation(run.info.run_id, {"psnr": psnr}, {}, {})
    return run.info.run_id, uri


def test_champion_moves_only_to_a_better_model(tmp_path, mlflow_store):
    first_run, first_uri = _logged_run(tmp_path, 28.0)
    first = registry.register(first_run, first_uri, "espcn-x3", "champion")
    assert first["version"] == 1 and first["promoted"] and first["previous_version"] is None
    worse = registry.register(*_logged_run(tmp_path, 27.5), "espcn-x3", "champion")
    assert worse["version"] == 2 and not worse["promoted"]
    better = registry.register(*_logged_run(tmp_path, 28.4), "espcn-x3", "champion")
    assert better["promoted"] and better["previous_version"] == 1
    again = registry.register(first_run, first_uri, "espcn-x3", "champion")
    assert again["version"] == 1 and not again["promoted"]  # re-registering a run adds no version

    import mlflow

    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias("espcn-x3", "champion").version == 3
    # the registry page tells versions apart: each has a one-line description with its score
    assert "BSDS300 test 27.50 dB" in client.get_model_version("espcn-x3", "2").description
    # every way of naming a model resolves to the same weights + config
    for uri in ("models:/espcn-x3@champion", "models:/espcn-x3/3", f"runs:/{first_run}/model"):
        assert (registry.fetch_model(uri) / "config.json").is_file()


def test_champion_is_compared_only_on_the_same_test_images(tmp_path, mlflow_store):
    """A run scored on 5 test images (evaluate.max_images: 5) cannot take champion from one scored
    on all 100 with a PSNR of other pictures, however high."""
    full, full_uri = _logged_run(tmp_path, None)
    registry.log_evaluation(full, {"psnr": 28.0, "images": 100}, {}, {})
    assert registry.register(full, full_uri, "espcn-x3", "champion")["promoted"]
    few, few_uri = _logged_run(tmp_path, None)
    registry.log_evaluation(few, {"psnr": 31.0, "images": 5}, {}, {})
    result = registry.register(few, few_uri, "espcn-x3", "champion")
    assert not result["promoted"]
    assert result["why"] == "v1 was scored on 100 test images, this run on 5"


def test_an_evaluation_with_other_params_leaves_the_training_run_as_it_was(
    tmp_path, mlflow_store, monkeypatch
):
    """`dvc exp run -S evaluate.max_images=1` reuses the cached training run: its evaluation goes to
    a child run holding the new params (one per experiment, evaluate's and benchmark's together),
    and the training run keeps the scores of the params it was logged with."""
    import mlflow

    run_id, _ = _logged_run(tmp_path, None)
    client = mlflow.MlflowClient(registry.tracking_uri())
    full = {"evaluate.max_images": 0, "evaluate.samples": 3}
    assert registry.log_evaluation(run_id, {"psnr": 28.0}, {}, full) == run_id
    monkeypatch.setenv("DVC_EXP_NAME", "one-image")
    one = {"evaluate.max_images": 1, "evaluate.samples": 3}
    child = registry.log_evaluation(run_id, {"psnr": 35.0}, {}, one)
    sets = {"benchmark.sets.Set5": "elsewhere/Set5"}
    assert registry.log_evaluation(run_id, {"Set5/psnr": 33.0}, {}, sets) == child
    run, evaluation = client.get_run(run_id), client.get_run(child)
    assert run.data.metrics["psnr"] == 28.0 and "Set5/psnr" not in run.data.metrics
    assert run.data.params["evaluate.max_images"] == "0"
    assert evaluation.data.metrics == {"psnr": 35.0, "Set5/psnr": 33.0}
    assert evaluation.data.params == {
        "evaluate.max_images": "1",
        "evaluate.samples": "3",
        "benchmark.sets.Set5": "elsewhere/Set5",
    }
    assert evaluation.info.run_name == "one-image" and evaluation.info.status == "FINISHED"
    assert evaluation.data.tags["mlflow.parentRunId"] == run_id  # under its training run in the UI
    monkeypatch.setenv("DVC_EXP_NAME", "two-images")  # another experiment: a run of its own
    assert registry.log_evaluation(run_id, {"psnr": 33.0}, {}, {"evaluate.max_images": 2}) not in (
        run_id,
        child,
    )
    # `srctl runs` lists training runs; the evaluations are found under them
    assert [r["run_id"] for r in registry.list_runs()] == [run_id]


def test_promote_by_hand_describes_the_version(tmp_path, mlflow_store):
    import mlflow

    run_id, _ = _logged_run(tmp_path, None)
    registry.promote(run_id, "champion")
    text = mlflow.MlflowClient().get_model_version("espcn-x3", "1").description
    assert text.startswith("x3 contrast clean, 10 steps") and "BSDS300 test not scored" in text
    with registry.training_run(tiny_params(), "0" * 64) as run:  # stopped before its model
        pass
    with pytest.raises(SrctlError, match=f"run {run.info.run_id} has no logged model"):
        registry.promote(run.info.run_id, "champion")


def test_register_needs_an_evaluated_run(tmp_path, mlflow_store):
    with pytest.raises(SrctlError, match="no 'psnr' metric"):
        registry.register(*_logged_run(tmp_path, None), "espcn-x3", "champion")


def test_default_store_is_at_the_project_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path / "src")
    assert registry.tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert registry.tracking_uri() == "http://127.0.0.1:5000"


def test_outside_a_project_is_one_line_and_leaves_no_store(photo, tmp_path):
    """`srctl infer photo.jpg` in a folder of photos, not in the project: it made an empty
    mlflow.db there and said no model espcn-x3 was registered."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    res = subprocess.run(
        [sys.executable, "-m", "srctl.cli", "infer", "photo.jpg"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1
    assert res.stderr == (
        f"error: no srctl project at or above {tmp_path} (no dvc.yaml), so no MLflow store: run "
        "this in the project, set MLFLOW_TRACKING_URI, or give --model-dir\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["photo.jpg"]


@pytest.mark.parametrize("run_id, model", [("abc", "x@champion"), (None, "espcn-x3"), (None, None)])
def test_model_uri_rejects_ambiguous_or_malformed(run_id, model):
    with pytest.raises(SrctlError):
        registry.model_uri(run_id, model)


def test_promote_refuses_an_alias_the_registry_would_not_take(mlflow_store):
    for alias in ("", "a b/c", "latest"):
        with pytest.raises(SrctlError, match="--alias must be letters, digits, _ or -"):
            registry.promote("espcn-x3/1", alias)


def test_unknown_run_is_a_clear_error(mlflow_store):
    with pytest.raises(SrctlError, match="cannot load model runs:/0123/model"):
        registry.fetch_model("runs:/0123/model")
    with pytest.raises(SrctlError, match="no run 0123 in sqlite"):
        registry.check_run("0123")


def test_unreachable_tracking_server_fails_before_training(prepared_dir, tmp_path, monkeypatch):
    import socket

    from srctl import train as T

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(
        SrctlError, match=f"MLflow tracking server http://127.0.0.1:{port} is unreachable"
    ):
        T.train(
            tiny_params(), prepared_dir, tmp_path / "m", tmp_path / "metrics", tmp_path / "run.json"
        )
    assert not (tmp_path / "m").exists() and not (tmp_path / "metrics").exists()  # nothing trained
    # nor does any other use of the store wait on MLflow's retries (minutes): runs, promote, ...
    with pytest.raises(SrctlError, match="is unreachable \\(ConnectionError\\)"):
        registry.list_runs()


def test_a_fetched_run_model_is_cached_and_then_needs_no_store(tmp_path, mlflow_store, monkeypatch):
    run_id, _ = _logged_run(tmp_path, 28.0)
    first = registry.fetch_model(f"runs:/{run_id}/model")
    assert first.is_relative_to(tmp_path / "cache")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////nonexistent/x.db")
    assert registry.fetch_model(f"runs:/{run_id}/model") == first
