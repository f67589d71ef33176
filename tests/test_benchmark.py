"""The benchmark stage and `srctl benchmark`: the literature's sets, scored by its convention, for
real."""

from __future__ import annotations

import mlflow
import pytest

from srctl import benchmark as B
from srctl import model as M
from srctl import registry

from conftest import DATASETS, srctl_cli


def test_bicubic_rows_reproduce_the_literature_and_absent_sets_are_reported(tmp_path):
    sets = {"Set5": DATASETS / "Set5", "Set14": DATASETS / "Set14", "Nowhere": tmp_path / "missing"}
    results = B.benchmark(M.ESPCN(3).eval(), sets)
    # x3 bicubic as published (Set14 only matches with its grayscale image scored on its own gray
    # levels)
    assert results["Set5"]["bicubic_psnr"] == pytest.approx(30.39, abs=0.05)
    assert results["Set14"]["bicubic_psnr"] == pytest.approx(27.55, abs=0.05)
    assert results["Set5"]["images"] == 5 and results["Set14"]["images"] == 14
    # LR inputs as a messenger's JPEG (q50, 4:2:0): bicubic as ../shared/NOTES.md measured it
    assert results["Set5-jpeg50"]["bicubic_psnr"] == pytest.approx(28.25, abs=0.01)
    assert results["Set14-jpeg50"]["bicubic_psnr"] == pytest.approx(26.08, abs=0.01)
    assert results["Nowhere"] is None and results["Nowhere-jpeg50"] is None
    text = B.report(results, sets, 3, "ESPCN")
    assert text.splitlines()[0] == "| x3 | Set5 | Set14 | Nowhere |"
    assert text.splitlines()[4].startswith("| bicubic, LR as JPEG q50 | 28.25")
    assert text.splitlines()[5].startswith("| ESPCN, LR as JPEG q50 | ")
    assert (
        "| bicubic | 30.4" in text
        and "absent |" in text
        and f"Nowhere: absent (no images in {tmp_path / 'missing'})" in text
    )
    assert B.flat(results)["Set14/images"] == 14 and not any(
        k.startswith("Nowhere") for k in B.flat(results)
    )


def test_nothing_to_score_or_no_run_to_log_into_is_an_error_before_scoring(
    tmp_path, mlflow_store, monkeypatch
):
    from srctl.errors import SrctlError

    # outside a project: the default set folders, from here, are not there
    with pytest.raises(SrctlError, match="no benchmark set here"):
        B.benchmark_model(None, None, tmp_path, None, log=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(f"benchmark: {{sets: {{Set5: {DATASETS / 'Set5'}}}}}\n")
    monkeypatch.setattr(B, "benchmark", lambda *a: pytest.fail("scored before the checks"))
    with pytest.raises(SrctlError, match="no run 0123abcd in sqlite"):
        B.benchmark_model("0123abcd", None, None, None, log=True)


def test_srctl_benchmark_scores_a_logged_model_and_logs_it_with_its_run(
    logged_model_store, tmp_path
):
    store, run_id = logged_model_store
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # a project whose params.yaml names the sets
    (tmp_path / "params.yaml").write_text(
        f"benchmark: {{sets: {{Set5: {DATASETS / 'Set5'}, Gone: gone}}}}\n"
    )
    res = srctl_cli("benchmark", "--run-id", run_id, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "| x3 | Set5 | Gone |" and lines[2].startswith("| bicubic | 30.40 / 0.86")
    assert (
        lines[3].startswith(f"| ESPCN (run {run_id[:8]}) |")
        and lines[-2] == f"Gone: absent (no images in {tmp_path / 'gone'})"
    )
    # the run was logged with params.yaml's default Set5 folder: these scores of another folder go
    # to a run of their own under it, which holds the folders
    child = lines[-1].split()[3].rstrip(",")
    assert lines[-1] == f"logged to run {child}, an evaluation of run {run_id} (other params)"
    client = mlflow.MlflowClient(registry.tracking_uri())
    assert client.get_run(child).data.params["benchmark.sets.Set5"] == str(DATASETS / "Set5")
    assert "Set5/psnr" not in client.get_run(run_id).data.metrics
    metrics = client.get_run(child).data.metrics
    assert (
        metrics["Set5/bicubic_psnr"] == pytest.approx(30.40, abs=0.01)
        and metrics["Set5/images"] == 5
        and metrics["Set5-jpeg50/bicubic_psnr"] == pytest.approx(28.25, abs=0.01)
    )

    res = srctl_cli("benchmark", "--model", "espcn-x3@nobody", cwd=tmp_path)
    assert (
        res.returncode == 1
        and res.stderr.strip()
        == f"error: no model models:/espcn-x3@nobody in {registry.tracking_uri()}"
    )
    registry.promote(run_id, "champion")
    res = srctl_cli("benchmark", "--model", "espcn-x3@champion", "--no-log", cwd=tmp_path)
    assert res.returncode == 0 and f"(run {run_id[:8]})" in res.stdout
