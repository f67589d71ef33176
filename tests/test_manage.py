"""Run and model management from the terminal: runs, promote, export, compare, for real."""

from __future__ import annotations

import mlflow
from PIL import Image

from srctl import registry

from conftest import BSDS300, srctl_cli, tiny_params


def test_runs_table_and_promote(logged_model_store):
    store, run_id = logged_model_store
    registry.log_evaluation(run_id, {"psnr": 27.5, "bicubic_psnr": 27.2, "train_seconds": 12.0}, {})
    res = srctl_cli("runs", "--sort", "psnr", cwd=store)
    assert res.returncode == 0, res.stderr
    line = next(line for line in res.stdout.splitlines() if run_id in line)
    assert "27.50" in line and "27.20" in line and "FINISHED" in line

    res = srctl_cli("promote", run_id, cwd=store)  # not registered yet: registered, then promoted
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"espcn-x3@champion: none -> v1 (run {run_id})"
    res = srctl_cli("promote", "espcn-x3/1", "--alias", "staging", cwd=store)
    assert res.stdout.startswith("espcn-x3@staging: none -> v1")
    client = mlflow.MlflowClient(registry.tracking_uri())
    assert client.get_model_version_by_alias("espcn-x3", "champion").version == 1
    res = srctl_cli("promote", "espcn-x3/7", cwd=store)
    assert (
        res.returncode == 1
        and res.stderr.strip() == f"error: no model version espcn-x3/7 in {registry.tracking_uri()}"
    )


def test_promote_names_a_real_model_as_register_does(logged_model_store, monkeypatch):
    """A run trained on degraded pictures goes to espcn-x3-real, never over the clean champion."""
    store, _ = logged_model_store
    monkeypatch.chdir(store)
    with registry.training_run(tiny_params(degradation="real"), "0" * 64) as run:
        registry.log_model(store / "model")  # the fixture's untrained model
    res = srctl_cli("promote", run.info.run_id, cwd=store)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("espcn-x3-real@champion: none -> v1"), res.stdout
    client = mlflow.MlflowClient(registry.tracking_uri())
    assert client.get_model_version_by_alias("espcn-x3-real", "champion").run_id == run.info.run_id
    clean = client.search_model_versions("name='espcn-x3'")
    assert all(v.run_id != run.info.run_id for v in clean)


def test_export_onnx_checked_with_onnxruntime(logged_model_store, tmp_path):
    import numpy as np
    import onnxruntime

    store, run_id = logged_model_store
    photo = BSDS300 / "images" / "test" / "3096.jpg"
    res = srctl_cli(
        "export",
        "--run-id",
        run_id,
        "-o",
        str(tmp_path / "m.onnx"),
        "--check-image",
        str(photo),
        cwd=store,
    )
    assert res.returncode == 0, res.stderr
    diff = float(res.stdout.rsplit("max abs diff ", 1)[1])
    assert diff < 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    assert session.run(None, {"y": np.zeros((2, 1, 10, 20), np.float32)})[0].shape == (2, 1, 30, 60)


def test_compare_picture(logged_model_store, tmp_path):
    store, run_id = logged_model_store
    small = tmp_path / "small.png"
    Image.open(BSDS300 / "images" / "test" / "3096.jpg").crop((100, 100, 220, 180)).save(small)
    res = srctl_cli("compare", str(small), "--run-id", run_id, cwd=store)
    assert res.returncode == 0, res.stderr
    sheet = Image.open(tmp_path / "small_compare.png")
    assert sheet.size == (2 * 360, 240 + 40 * 3)
    res = srctl_cli("compare", str(small), "--run-id", run_id, "-o", str(small), cwd=store)
    assert res.returncode == 1 and "is an input" in res.stderr
