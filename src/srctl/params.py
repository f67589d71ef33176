"""The one place that reads params.yaml and knows where the project lives."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from srctl.errors import SrctlError


@dataclass(frozen=True)
class Download:
    url: str = "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/bsds/BSDS300-images.tgz"
    # sha256 over the 300 JPEGs (see download.content_hash): holds for the tarball and an extracted
    # copy.
    content_sha256: str = "44584b06a9d2f22028d345f087f99d2428a5b6c410e8bede069770a60a8a24ef"
    retries: int = 3
    timeout_s: float = 30.0


@dataclass(frozen=True)
class Prepare:
    max_train_images: int = 0  # 0 = all
    max_test_images: int = 0
    # folders of your own HR pictures under data/extra (`dvc add` them), added to the training split
    extra_train: list = field(default_factory=list)


@dataclass(frozen=True)
class Degrade:
    """How `train.degradation: real` makes each training LR picture: a random chain, as real
    pictures are made (see degrade.real)."""

    variants: int = 16  # degraded LR copies of each training picture, made once by prepare
    blur: float = 0.2  # probability of a Gaussian blur of the HR picture first
    blur_sigma: list = field(default_factory=lambda: [0.2, 1.5])  # HR pixels
    kernels: list = field(default_factory=lambda: ["bicubic", "bilinear", "area"])
    noise: float = 0.2  # probability of noise on the LR picture
    poisson: float = 0.3  # of the noise: Poisson (shot) noise, else Gaussian
    noise_sigma: list = field(default_factory=lambda: [1.0, 10.0])  # Gaussian, levels of 255
    poisson_peak: list = field(default_factory=lambda: [200.0, 2000.0])  # photons at white
    jpeg: float = 0.8  # probability of JPEG (4:2:0 chroma) last
    jpeg_quality: list = field(default_factory=lambda: [30, 95])


# the networks train.arch names (model.ARCHS builds them; this module imports no torch)
ARCHS = ("seed", "paper", "residual", "contrast", "deep")


@dataclass(frozen=True)
class Train:
    # seed: ReLU 64-64-32 (59,657 params); paper: Shi et al.'s 3-layer tanh 64-32; residual: the
    # seed's layers on top of bicubic; contrast: residual, no biases, zero-sum first filters;
    # deep: contrast with 8 hidden layers
    arch: str = "contrast"
    # clean: LR = the bicubic downscale; real: blurred, noisy, JPEG'd LR (params' degrade section),
    # registered as <model_name>-x<scale>-real
    degradation: str = "clean"
    # "" trains from scratch; NAME@ALIAS, NAME/VERSION or a run id: from that logged model's weights
    # (fine-tuning; the run is recorded as the new run's parent)
    init: str = ""
    epochs: int = 7
    steps_per_epoch: int = 2000
    batch_size: int = 10
    # side of a low-resolution patch (the paper's 17 wastes more steps on zero-padded borders)
    patch_size: int = 32
    lr: float = 2e-3
    lr_final: float = 1e-5  # cosine decay from lr to lr_final over all steps
    precision: str = "auto"  # auto: bf16/fp16 autocast where the hardware has it; fp32: never
    # auto: torch.compile the network where a C++ compiler is found; never: eager (YAML reads a bare
    # off as false)
    compile: str = "auto"
    resume: bool = (
        True  # continue from models/checkpoint.pt when one of the same params and data exists
    )
    # > 1: the stage runs itself under torchrun as DDP (one process per GPU, or CPU processes)
    processes: int = 1
    # auto: on one CUDA GPU the whole step is captured once as a CUDA graph; never: the plain step
    cuda_graph: str = "auto"


@dataclass(frozen=True)
class Evaluate:
    max_images: int = 0  # 0 = all 100 BSDS300 test images
    samples: int = 3  # bicubic | SR | HR pictures logged to MLflow


def _benchmark_sets() -> dict[str, str]:
    return {name: f"../shared/datasets/{name}" for name in ("Set5", "Set14", "BSD100")}


@dataclass(frozen=True)
class Benchmark:
    # name: folder of HR images, relative to the project root; a missing folder is reported as
    # absent
    sets: dict = field(default_factory=_benchmark_sets)


@dataclass(frozen=True)
class Register:
    model_name: str = "espcn"  # registered as <model_name>-x<scale>
    alias: str = "champion"


def registered_name(model_name: str, scale: int | str, degradation: str) -> str:
    """espcn-x3 for a clean model, espcn-x3-real for one of degraded pictures (its own champion)."""
    return f"{model_name}-x{scale}" + ("-real" if degradation == "real" else "")


@dataclass(frozen=True)
class Params:
    scale: int = 3
    seed: int = 0
    download: Download = field(default_factory=Download)
    prepare: Prepare = field(default_factory=Prepare)
    degrade: Degrade = field(default_factory=Degrade)
    train: Train = field(default_factory=Train)
    evaluate: Evaluate = field(default_factory=Evaluate)
    benchmark: Benchmark = field(default_factory=Benchmark)
    register: Register = field(default_factory=Register)

    @property
    def registered_name(self) -> str:
        return registered_name(self.register.model_name, self.scale, self.train.degradation)

    def flat(self, section: str = "") -> dict[str, object]:
        """`train.lr`-style keys, the way `dvc exp run -S` and MLflow name them (only `section`'s,
        if named)."""

        def walk(prefix: str, value: object):
            if isinstance(value, dict):
                for k, v in value.items():
                    yield from walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                yield prefix, value

        prefix = f"{section}." if section else ""
        return {k: v for k, v in walk("", dataclasses.asdict(self)) if k.startswith(prefix)}


@dataclass(frozen=True)
class Paths:
    """Where the pipeline keeps its files under one project root; dvc.yaml names the same paths."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def dataset(self) -> Path:  # BSDS300 as the download stage leaves it
        return self.raw / "BSDS300"

    @property
    def extra(self) -> Path:  # where prepare.extra_train's folders live (a dep of prepare)
        return self.root / "data" / "extra"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def model(self) -> Path:
        return self.root / "models" / "espcn"

    @property
    def run_file(self) -> Path:  # which MLflow run made `model` (written by train)
        return self.root / "models" / "mlflow_run.json"

    @property
    def registered(self) -> Path:
        return self.root / "models" / "registered.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"


def paths() -> Paths:
    """The paths of the project a stage or command works in (see project_root)."""
    return Paths(project_root())


def project_root() -> Path:
    """The project a stage or command works in (its params.yaml, data/, models/): the nearest folder
    at or above the cwd with a dvc.yaml. DVC runs stages there; `dvc exp run --temp/--queue` in a
    copy of the repo under <repo>/.dvc/tmp/exps/, which is then the project."""
    start = Path.cwd().resolve()
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return start


def repo_root() -> Path:
    """The user's checkout: the project root, or for an experiment's temporary copy the repo it was
    copied from (DVC_ROOT names it there). The embedded MLflow store lives here, so every
    experiment's run lands in one store and outlives the copy; params.yaml's paths outside the
    project are taken from here too."""
    root = Path(os.environ["DVC_ROOT"]).resolve() if os.environ.get("DVC_ROOT") else project_root()
    if ".dvc" in root.parts[:-1]:
        return Path(*root.parts[: root.parts.index(".dvc")])
    return root


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def check_register_names(model_name: str, alias: str, flag: str = "register.alias") -> None:
    """Names the Model Registry takes: a model name without / or :, an alias of letters, digits,
    _ and - (not `latest`, nor a version's v1, v2...). A one-line error before any stage, naming
    where the alias came from (`flag`)."""
    if not model_name or any(c in model_name for c in "/:"):
        raise SrctlError(f"register.model_name must be a name without / or :, got {model_name!r}")
    if not re.fullmatch(r"[\w-]+", alias) or alias == "latest" or re.fullmatch(r"v\d+", alias):
        raise SrctlError(
            f"{flag} must be letters, digits, _ or - (not latest or v<N>), got {alias!r}"
        )


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise SrctlError(f"params.yaml: '{where}' must be a mapping")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        section = "the top level" if where == "params" else f"'{where}'"
        raise SrctlError(f"params.yaml: unknown key(s) in {section}: {', '.join(unknown)}")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        key = name if where == "params" else f"{where}.{name}"
        if isinstance(default, float) and isinstance(value, str) and _FLOAT.fullmatch(value):
            value = float(value)  # YAML 1.1 reads 1e-06 (as DVC's -S writes it) as a string
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, name)
        elif (
            isinstance(default, float)
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        ):
            kwargs[name] = float(value)
        elif isinstance(default, str) and isinstance(value, bool):
            raise SrctlError(
                f"params.yaml: '{key}' must be a word, got {value!r} (YAML reads a bare yes, no, "
                "on or off as true/false)"
            )
        elif type(value) is not type(default):
            raise SrctlError(
                f"params.yaml: '{key}' must be {type(default).__name__}, got {value!r}"
            )
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _check_degrade(d: Degrade) -> None:
    def fail(what: str):
        raise SrctlError(f"params.yaml: degrade.{what}")

    if d.variants < 1:
        fail(f"variants must be >= 1, got {d.variants}")
    for name in ("blur", "noise", "poisson", "jpeg"):
        if not 0 <= getattr(d, name) <= 1:
            fail(f"{name} is a probability (0..1), got {getattr(d, name)}")
    for name, lo in (
        ("blur_sigma", 0),
        ("noise_sigma", 0),
        ("poisson_peak", 1),
        ("jpeg_quality", 1),
    ):
        r = getattr(d, name)
        if not (
            len(r) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r)
            and lo <= r[0] <= r[1]
            and (name != "jpeg_quality" or r[1] <= 100)
        ):
            fail(f"{name} must be [low, high] with {lo} <= low <= high, got {r!r}")
    if not d.kernels or not set(d.kernels) <= {"bicubic", "bilinear", "area"}:
        fail(f"kernels must name some of bicubic, bilinear, area, got {d.kernels!r}")


def _check_ranges(p: Params) -> None:
    """Numbers out of range fail here, in one line, before any stage starts (not as a crash or a
    NaN loss minutes into training)."""
    t = p.train
    limits = {  # name: (value, least allowed)
        "download.retries": (p.download.retries, 1),
        "prepare.max_train_images": (p.prepare.max_train_images, 0),
        "prepare.max_test_images": (p.prepare.max_test_images, 0),
        "train.epochs": (t.epochs, 1),
        "train.steps_per_epoch": (t.steps_per_epoch, 1),
        "train.batch_size": (t.batch_size, 1),
        "train.patch_size": (t.patch_size, 1),
        "train.lr_final": (t.lr_final, 0),
        "evaluate.max_images": (p.evaluate.max_images, 0),
        "evaluate.samples": (p.evaluate.samples, 0),
    }
    for name, (value, least) in limits.items():
        if value < least:
            raise SrctlError(f"params.yaml: {name} must be >= {least}, got {value}")
    for name, value in (("download.timeout_s", p.download.timeout_s), ("train.lr", t.lr)):
        if not value > 0:
            raise SrctlError(f"params.yaml: {name} must be > 0, got {value}")
    if t.lr_final > t.lr:  # the cosine would rise, not decay
        raise SrctlError(f"params.yaml: train.lr_final must be <= train.lr, got {t.lr_final}")


def load(path: Path | None = None) -> Params:
    path = path or project_root() / "params.yaml"
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SrctlError(f"cannot read {path}: {exc}") from exc
    params = _build(Params, values, "params")
    if params.train.arch not in ARCHS:
        raise SrctlError(
            f"params.yaml: train.arch must be {', '.join(ARCHS[:-1])} or {ARCHS[-1]}, "
            f"got {params.train.arch!r}"
        )
    if params.train.degradation not in ("clean", "real"):
        raise SrctlError(
            "params.yaml: train.degradation must be clean or real, "
            f"got {params.train.degradation!r}"
        )
    _check_degrade(params.degrade)
    if not all(isinstance(f, str) and f for f in params.prepare.extra_train):
        raise SrctlError("params.yaml: prepare.extra_train must be a list of folders")
    if params.train.compile not in ("auto", "never"):
        raise SrctlError(
            f"params.yaml: train.compile must be auto or never, got {params.train.compile!r}"
        )
    if params.train.cuda_graph not in ("auto", "never"):
        raise SrctlError(
            f"params.yaml: train.cuda_graph must be auto or never, got {params.train.cuda_graph!r}"
        )
    if params.train.precision not in ("auto", "fp32"):
        raise SrctlError(
            f"params.yaml: train.precision must be auto or fp32, got {params.train.precision!r}"
        )
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in params.benchmark.sets.items()):
        raise SrctlError("params.yaml: benchmark.sets must map set names to folders")
    if params.train.processes < 1 or params.train.batch_size % params.train.processes:
        raise SrctlError(
            f"params.yaml: train.processes must be >= 1 and divide train.batch_size "
            f"({params.train.batch_size}), got {params.train.processes}"
        )
    _check_ranges(params)
    try:
        check_register_names(params.register.model_name, params.register.alias)
    except SrctlError as exc:
        raise SrctlError(f"params.yaml: {exc}") from None
    if params.scale not in (2, 3, 4):
        raise SrctlError(f"params.yaml: scale must be 2, 3 or 4, got {params.scale}")
    return params
