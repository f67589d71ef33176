import re
from pathlib import Path

import pytest

from srctl import params as P
from srctl.errors import SrctlError

ROOT = Path(__file__).resolve().parents[1]


def test_repo_params_load_and_flatten():
    p = P.load(ROOT / "params.yaml")
    assert p.scale == 3 and p.registered_name == "espcn-x3"
    real = P.Params(train=P.Train(degradation="real"))
    assert real.registered_name == "espcn-x3-real"  # its own model, its own champion
    flat = p.flat()
    assert flat["train.lr"] == p.train.lr and flat["scale"] == 3
    # a key missing from someone's params.yaml means what the repo's file says
    assert flat == P.Params().flat()


@pytest.mark.parametrize(
    "text, message",
    [
        ("train: {lrr: 0.1}", "unknown key(s) in 'train': lrr"),
        ("train: {epochs: ten}", "'train.epochs' must be int"),
        ("scale: 5", "scale must be 2, 3 or 4"),
        ("train: [1, 2]", "'train' must be a mapping"),
        ("train: {precision: fp8}", "train.precision must be auto or fp32"),
        ("train: {compile: off}", "'train.compile' must be a word, got False (YAML reads"),
        ("train: {arch: srcnn}", "train.arch must be seed, paper, residual, contrast or deep"),
        ("benchmark: {sets: {Set5: 5}}", "benchmark.sets must map set names to folders"),
        (
            "train: {processes: 3, batch_size: 20}",
            "train.processes must be >= 1 and divide train.batch_size (20), got 3",
        ),
        ("train: {processes: 0}", "train.processes must be >= 1"),
        ("train: {degradation: jpeg}", "train.degradation must be clean or real"),
        ("degrade: {jpeg: 2}", "degrade.jpeg is a probability (0..1), got 2"),
        ("degrade: {jpeg_quality: [90, 30]}", "degrade.jpeg_quality must be [low, high]"),
        ("degrade: {noise_sigma: [1]}", "degrade.noise_sigma must be [low, high]"),
        ("degrade: {kernels: [lanczos]}", "degrade.kernels must name some of bicubic"),
        ("degrade: {variants: 0}", "degrade.variants must be >= 1"),
        ("train: {epochs: 0}", "train.epochs must be >= 1, got 0"),
        ("train: {steps_per_epoch: 0}", "train.steps_per_epoch must be >= 1, got 0"),
        ("train: {batch_size: 0}", "train.batch_size must be >= 1, got 0"),
        ("train: {lr: 0}", "train.lr must be > 0, got 0"),
        ("prepare: {max_train_images: -1}", "prepare.max_train_images must be >= 0, got -1"),
        ("download: {retries: 0}", "download.retries must be >= 1, got 0"),
        ("scale: three", "'scale' must be int"),
        ("colour: 1", "unknown key(s) in the top level: colour"),
        ("train: {lr_final: 0.01}", "train.lr_final must be <= train.lr, got 0.01"),
        ("train: {lr: 1e-6}", "train.lr_final must be <= train.lr, got 1e-05"),  # read as a float
        ("train: {lr: 1e-3x}", "'train.lr' must be float, got '1e-3x'"),
        ("register: {model_name: ''}", "register.model_name must be a name without / or :"),
        ("register: {model_name: my/model}", "register.model_name must be a name without / or :"),
        ("register: {alias: ''}", "register.alias must be letters, digits, _ or -"),
        ("register: {alias: v2}", "register.alias must be letters, digits, _ or -"),
    ],
)
def test_bad_params_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(SrctlError, match=re.escape(message)):
        P.load(path)


def test_floats_in_scientific_notation_are_floats(tmp_path):
    """YAML 1.1 reads 1e-06 (how DVC's -S writes 0.000001) as a string; a float param takes it."""
    path = tmp_path / "params.yaml"
    path.write_text("train: {lr: 5e-4, lr_final: 1e-06}")
    params = P.load(path)
    assert params.train.lr == 0.0005 and params.train.lr_final == 0.000001


def test_project_root_and_repo_root_in_an_experiments_temp_copy(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    temp = tmp_path / ".dvc" / "tmp" / "exps" / "standalone" / "tmpabc"
    temp.mkdir(parents=True)
    (temp / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(temp)  # where `dvc exp run --temp` runs the stages, DVC_ROOT naming the repo
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert P.project_root() == temp  # the copy's params, data, models
    assert P.repo_root() == tmp_path  # the repo's MLflow store
    monkeypatch.delenv("DVC_ROOT")
    assert P.repo_root() == tmp_path
    sub = tmp_path / "src"
    sub.mkdir()
    monkeypatch.chdir(sub)
    assert P.project_root() == P.repo_root() == tmp_path
