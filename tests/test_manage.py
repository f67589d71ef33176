"""Run and model management from the terminal: runs, promote, export, compare, for real."""

from __future__ import annotations

import mlflow
import numpy as np
from PIL import Image

from srctl import registry

from conftest import BSDS300, srctl_cli, tiny_params


def test_runs_table_and_promote(logged_model_store, monkeypatch):
    store, run_id = logged_model_store
    registry.log_evaluation(
        run_id, {"psnr": 27.5, "bicubic_psnr": 27.2, "train_seconds": 12.0}, {}, {}
    )
    # (set either way: readline, which pytest loads, exports its terminal's COLUMNS to children)
    monkeypatch.setenv("COLUMNS", "300")  # a wide terminal: every column
    res = srctl_cli("runs", "--sort", "psnr", cwd=store)
    assert res.returncode == 0, res.stderr
    line = next(line for line in res.stdout.splitlines() if run_id in line)
    assert "27.50" in line and "27.20" in line and "FINISHED" in line
    monkeypatch.setenv("COLUMNS", "80")  # a terminal of 80: the columns least asked for go
    res = srctl_cli("runs", cwd=store)
    assert res.returncode == 0, res.stderr
    assert max(map(len, res.stdout.splitlines()[:-1])) <= 80
    line = next(line for line in res.stdout.splitlines() if run_id in line)
    assert "27.50" in line and "27.20" not in line
    assert res.stdout.splitlines()[-1].endswith(
        "bicubic, lr, x, data, train s left out to fit 80 columns)"
    )

    res = srctl_cli("promote", run_id, cwd=store)  # not registered yet: registered, then promoted
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"espcn-x3@champion: none -> v1 (run {run_id})"
    assert res.stderr == ""  # none of MLflow's own lines ("Successfully registered model ...")
    res = srctl_cli("promote", "espcn-x3/1", "--alias", "staging", cwd=store)
    assert res.stdout.startswith("espcn-x3@staging: none -> v1")
    client = mlflow.MlflowClient(registry.tracking_uri())
    assert client.get_model_version_by_alias("espcn-x3", "champion").version == 1
    res = srctl_cli("promote", "espcn-x3/7", cwd=store)
    assert (
        res.returncode == 1
        and res.stderr.strip() == f"error: no model version espcn-x3/7 in {registry.tracking_uri()}"
    )


def test_a_registered_model_leaves_no_download_behind(logged_model_store, tmp_path, monkeypatch):
    """NAME@ALIAS is fetched afresh by each command (an alias moves), into a temporary folder that
    goes when the command ends."""
    store, run_id = logged_model_store
    assert srctl_cli("promote", run_id, cwd=store).returncode == 0
    photo = tmp_path / "photo.png"
    Image.open(BSDS300 / "images" / "test" / "3096.jpg").crop((0, 0, 60, 40)).save(photo)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))  # the child's temp dir
    res = srctl_cli("infer", "--model", "espcn-x3@champion", str(photo), cwd=store)
    assert res.returncode == 0, res.stderr
    assert Image.open(tmp_path / "photo_x3.png").size == (180, 120)
    assert not list(tmp.glob("srctl-model-*"))  # (MLflow keeps a db_init_lock file there)


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
    assert len(res.stdout.splitlines()) == 1 and "[torch.onnx]" not in res.stdout + res.stderr
    diff = float(res.stdout.rsplit("max abs diff ", 1)[1])
    assert diff < 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    assert session.run(None, {"y": np.zeros((2, 1, 10, 20), np.float32)})[0].shape == (2, 1, 30, 60)


def test_export_never_overwrites_what_it_was_not_told_to(logged_model_store, tmp_path):
    """Its check image, an existing file (without --force), and a bad check image is a line."""
    store, run_id = logged_model_store
    photo = tmp_path / "photo.png"
    Image.open(BSDS300 / "images" / "test" / "3096.jpg").crop((0, 0, 90, 60)).save(photo)
    before = photo.read_bytes()
    args = ("export", "--run-id", run_id, "--check-image", str(photo), "-o")
    res = srctl_cli(*args, str(photo), cwd=store)
    assert (
        res.returncode == 1
        and res.stderr.strip() == f"error: {photo}: is an input; refusing to overwrite it"
    )
    assert photo.read_bytes() == before
    kept = tmp_path / "kept.onnx"
    kept.write_bytes(b"someone's file")
    res = srctl_cli(*args, str(kept), cwd=store)
    assert res.returncode == 1 and "exists; pass --force" in res.stderr
    assert kept.read_bytes() == b"someone's file"
    res = srctl_cli(*args, str(tmp_path), cwd=store)
    assert res.returncode == 1 and f"{tmp_path}: is a folder; -o names the .onnx file" in res.stderr
    res = srctl_cli(*args, str(kept / "m.onnx"), cwd=store)  # a file where its folder would be
    want = "cannot write there (a file is where its folder would be)"
    assert res.returncode == 1 and res.stderr == f"error: {kept / 'm.onnx'}: {want}\n"
    assert srctl_cli(*args, str(kept), "--force", cwd=store).returncode == 0
    assert kept.stat().st_size > 1000
    (tmp_path / "cut.png").write_bytes(before[:300])
    res = srctl_cli(
        *args[:-2], str(tmp_path / "cut.png"), "-o", str(tmp_path / "m.onnx"), cwd=store
    )
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "cut.png: damaged or unreadable image" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.png", "kept.onnx", "photo.png"]


def test_compare_picture(logged_model_store, tmp_path):
    store, run_id = logged_model_store
    small = tmp_path / "small.png"
    Image.open(BSDS300 / "images" / "test" / "3096.jpg").crop((100, 100, 220, 180)).save(small)
    res = srctl_cli("compare", str(small), "--run-id", run_id, cwd=store)
    assert res.returncode == 0, res.stderr
    sheet = Image.open(tmp_path / "small_compare.png")
    assert sheet.size == (2 * 360, 240 + 40 * 3)
    # the zoomed crops span the sheet's width (they filled half of it, the rest left white)
    assert (np.asarray(sheet)[240:] == 255).all(axis=2).mean() < 0.01
    res = srctl_cli("compare", str(small), "--run-id", run_id, "-o", str(small), cwd=store)
    assert res.returncode == 1 and "is an input" in res.stderr
    # a 16-bit greyscale scan is compared as its 8-bit self, not as a white sheet
    grey = Image.open(small).convert("L")
    Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257).save(tmp_path / "scan16.png")
    res = srctl_cli("compare", str(tmp_path / "scan16.png"), "--run-id", run_id, cwd=store)
    assert res.returncode == 0, res.stderr
    bicubic = Image.open(tmp_path / "scan16_compare.png").convert("L").crop((0, 0, 360, 240))
    want = grey.resize((360, 240), Image.Resampling.BICUBIC)
    # (the sheet's label and zoom box are drawn on it: the mean, not the max)
    assert np.abs(np.asarray(bicubic, float) - np.asarray(want, float)).mean() < 2
