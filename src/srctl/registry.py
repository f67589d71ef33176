"""The one place that talks to MLflow: tracking runs, logging models, the Model Registry.

Default store: `sqlite:///<repo>/mlflow.db` with artifacts in `<repo>/mlartifacts`, found from the
repo root (DVC_ROOT under DVC; the original repo for `dvc exp run --temp/--queue` copies), not from
the cwd. `MLFLOW_TRACKING_URI` points everything at a team server.

Also stage `register`: registers the trained model and moves the alias to it when it scores better.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from srctl import params as P
from srctl.degrade import MESSENGER_QUALITY
from srctl.errors import SrctlError, run_main
from srctl.files import atomic_dir, cache_dir, write_json

EXPERIMENT = "srctl"
MODEL_ARTIFACT = "model"  # runs:/<run_id>/model
SCORE = "psnr"  # what makes a champion: mean BSDS300 test PSNR (dB), from the evaluate stage


def _embedded_uri() -> str | None:
    """The project's own store; None outside a project."""
    root = P.repo_root()
    return f"sqlite:///{root}/mlflow.db" if (root / "dvc.yaml").is_file() else None


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the project's store; outside a project, a one-line error (a
    command made an empty mlflow.db in whatever folder it ran in, then found no model there)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or _embedded_uri()
    if uri is None:
        raise SrctlError(
            f"no srctl project at or above {Path.cwd()} (no dvc.yaml), so no MLflow store: run "
            "this in the project, set MLFLOW_TRACKING_URI, or give --model-dir"
        )
    return uri


def quiet() -> None:
    """For the command line: keep stderr for what the user must read (no INFO lines, no download
    progress bars). Before MLflow is imported."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _mlflow():
    """Import MLflow lazily (it costs seconds) and point it at this project's store, once it is
    known to answer."""
    check_reachable()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def _experiment_id(mlflow) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    found = mlflow.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    # Embedded store: keep artifacts beside mlflow.db rather than under whatever the cwd is.
    # (not the variable: mlflow.set_tracking_uri sets it, to the embedded store too)
    embedded = mlflow.get_tracking_uri() == _embedded_uri()
    location = (P.repo_root() / "mlartifacts").as_uri() if embedded else None
    return mlflow.create_experiment(name, artifact_location=location)


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


_REACHED: set[str] = set()  # the servers that have answered this process


def check_reachable() -> None:
    """Fail in seconds when a tracking server does not answer: not after an hour of training, nor
    after MLflow's own retries (minutes of silence)."""
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")) or uri in _REACHED:
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=10).raise_for_status()
        _REACHED.add(uri)
    except requests.RequestException as exc:
        # urllib3's text is a paragraph: the kind of failure says enough (refused, timed out, 404)
        why = f"HTTP {exc.response.status_code}" if exc.response is not None else type(exc).__name__
        raise SrctlError(
            f"MLflow tracking server {uri} is unreachable ({why}); check MLFLOW_TRACKING_URI"
        ) from exc


def run_name(params: P.Params) -> str:
    """A run's name in the MLflow UI: the DVC experiment's, else what ran (x3-contrast-14k;
    x3-contrast-14k-real for a model of degraded pictures; x3-contrast-2k-finetuned from
    train.init)."""
    steps = params.train.epochs * params.train.steps_per_epoch
    label = f"{steps // 1000}k" if steps % 1000 == 0 else str(steps)
    real = "-real" if params.train.degradation == "real" else ""
    label += "-finetuned" if params.train.init else ""
    return os.environ.get("DVC_EXP_NAME") or f"x{params.scale}-{params.train.arch}-{label}{real}"


def _log_dataset(
    mlflow, params: P.Params, dataset_sha256: str, extra: tuple[str, str] | None
) -> None:
    """BSDS300 (and the user's own pictures) as the run's inputs, so the UI's Datasets section
    shows what the model learnt from."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    # MLflow keeps at most 36 characters of a digest; the full content hash goes in a tag
    dataset = MetaDataset(
        HTTPDatasetSource(params.download.url), name="BSDS300", digest=dataset_sha256[:16]
    )
    mlflow.log_input(dataset, context="training", tags={"content_sha256": dataset_sha256})
    if extra:
        folders, sha256 = extra
        with warnings.catch_warnings():  # MLflow has two local sources for file:, of one kind
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
            source = resolve_dataset_source(P.paths().extra.resolve().as_uri())
        dataset = MetaDataset(source, name=f"extra_train: {folders}", digest=sha256[:16])
        mlflow.log_input(dataset, context="training", tags={"content_sha256": sha256})


@contextlib.contextmanager
def training_run(
    params: P.Params,
    dataset_sha256: str,
    resume_run_id: str | None = None,
    parent_run_id: str | None = None,
    extra: tuple[str, str] | None = None,
) -> Iterator[object]:
    """An MLflow run holding every param, the dataset and the provenance tags, or the interrupted
    run `resume_run_id`. It ends FINISHED, FAILED if the block raises, KILLED on Ctrl-C/SIGTERM.

    `parent_run_id`: the run whose model it starts from (train.init), shown as its parent in the
    UI; `extra`: (folder list, content hash) of the user's own pictures, a second dataset input."""
    mlflow = _mlflow()
    exp_name = os.environ.get("DVC_EXP_NAME")
    tags = {"dataset_sha256": dataset_sha256, "scale": str(params.scale), "arch": params.train.arch}
    tags["degradation"] = params.train.degradation  # a column of its own in the UI's run list
    if commit := _git_commit(P.project_root()):
        tags["git_commit"] = commit
    if exp_name:
        tags["dvc_exp_name"] = exp_name
    if parent_run_id:  # the tag MLflow's own nested runs carry: the UI lists the run under it
        tags |= {"mlflow.parentRunId": parent_run_id, "init": params.train.init}
    if resume_run_id:
        try:
            run = mlflow.start_run(run_id=resume_run_id)
        except mlflow.exceptions.MlflowException:
            # not in this store (moved, deleted): start afresh
            resume_run_id = None
    if not resume_run_id:
        run = mlflow.start_run(
            experiment_id=_experiment_id(mlflow), run_name=run_name(params), tags=tags
        )
        mlflow.log_params(params.flat())
        _log_dataset(mlflow, params, dataset_sha256, extra)
    with run:
        try:
            yield run
        except KeyboardInterrupt:
            mlflow.end_run("KILLED")
            raise


class BackgroundRun:
    """`training_run(*args)`, driven from a thread of its own, so that MLflow's import and a fresh
    store's first run (seconds of Python) overlap the start of training: on a GPU that is a fair
    part of the stage. Every call runs there, in order (MLflow's active run is per thread);
    `log_metrics` returns at once, `info` and `log_model` wait. A failure there is raised in the
    caller's thread by the next call, or on leaving the block."""

    def __init__(self, *args):
        from concurrent.futures import ThreadPoolExecutor

        check_reachable()  # a wrong server URL fails now, not after the first epoch
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="mlflow")
        self._context = training_run(*args)
        self._started = self._thread.submit(self._context.__enter__)
        self._pending = [self._started]

    def _check(self) -> None:
        for done in [f for f in self._pending if f.done()]:
            done.result()  # raises what failed
            self._pending.remove(done)

    def info(self):
        """The run's info (run_id, experiment_id, ...), once it has started."""
        return self._started.result().info

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._check()
        self._pending.append(self._thread.submit(log_metrics, metrics, step))

    def log_model(self, model_dir: Path) -> str:
        self._check()
        return self._thread.submit(log_model, model_dir).result()

    def __enter__(self) -> BackgroundRun:
        return self

    def __exit__(self, *exc) -> bool:
        try:
            failed = self._started.exception()  # waits: a started run must be ended (KILLED...)
            if failed is not None:  # ...but this one never started
                if exc[0] is None:
                    raise failed
                return False
            logging_failed = None
            if exc[0] is None:
                try:
                    for f in self._pending:
                        f.result()
                except Exception as err:  # the run ends FAILED, and the error is raised
                    logging_failed, exc = err, (type(err), err, err.__traceback__)
            suppressed = self._thread.submit(self._context.__exit__, *exc).result()
            if logging_failed is not None:
                raise logging_failed
            return suppressed
        finally:
            self._thread.shutdown()


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    _mlflow().log_metrics(metrics, step=step)


def log_model(model_dir: Path) -> str:
    """Log the model as a pyfunc whose loader is srctl.infer: weights + JSON, no pickle, no
    cloudpickle.

    Returns its `models:/m-...` URI (MLflow 3's LoggedModel), the one to register."""
    import srctl

    mlflow = _mlflow()
    info = mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT,
        loader_module="srctl.infer",
        data_path=str(model_dir),
        code_paths=[str(Path(srctl.__file__).parent)],  # the model carries the code that runs it
        pip_requirements=[
            "torch",
            "pillow",
            "numpy",
            "safetensors",
        ],  # skips a slow environment scan
    )
    return info.model_uri


EVALUATES = "evaluates"  # tag of a run that holds another run's evaluation: that run's id


def _agrees(run, values: dict[str, str]) -> bool:
    """The run was logged with these values of these params (or not with them at all)."""
    return all(run.data.params.get(k, v) == v for k, v in values.items())


def _evaluation_run(client, parent, values: dict[str, str]):
    """A child run of training run `parent` for an evaluation with other params than it was logged
    with: the DVC experiment's own, if its evaluate stage made one before its benchmark stage,
    else a new one."""
    exp_name = os.environ.get("DVC_EXP_NAME")
    pid = parent.info.run_id
    if exp_name:
        found = client.search_runs(
            [parent.info.experiment_id],
            f"tags.{EVALUATES} = '{pid}' and tags.dvc_exp_name = '{exp_name}'",
        )
        if mine := [r for r in found if _agrees(r, values)]:
            return mine[0]
    tags = {
        k: parent.data.tags[k] for k in ("scale", "arch", "degradation") if k in parent.data.tags
    }
    tags |= {"mlflow.parentRunId": pid, EVALUATES: pid}  # listed under its training run in the UI
    if exp_name:
        tags["dvc_exp_name"] = exp_name
    name = exp_name or f"{parent.info.run_name}-evaluation"
    return client.create_run(parent.info.experiment_id, run_name=name, tags=tags)


def log_evaluation(
    run_id: str, metrics: dict[str, float], images: dict[str, object], params: dict[str, object]
) -> str:
    """Add evaluation metrics and sample pictures to finished training run `run_id`; `params`: the
    evaluation's own (evaluate.*, benchmark.*). An experiment that changes only those reuses the
    cached training run, whose scores must stay those of the params it was logged with: then the
    evaluation goes to a child run holding its params. Returns the run logged into."""
    from mlflow.entities import Param

    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    values = {k: str(v) for k, v in params.items()}
    target = run if _agrees(run, values) else _evaluation_run(client, run, values)
    target_id = target.info.run_id
    new = [Param(k, v) for k, v in values.items() if k not in target.data.params]
    client.log_batch(target_id, params=new)  # a set added since the run was logged, say
    for key, value in metrics.items():
        client.log_metric(target_id, key, value)
    for name, image in images.items():
        client.log_image(target_id, image, artifact_file=f"samples/{name}.png")
    if target_id != run_id:
        client.set_terminated(target_id)
    return target_id


def evaluation_note(logged: str, trained_by: str) -> str:
    """What the user is told when log_evaluation went to a child run ("" when it did not)."""
    if logged == trained_by:
        return ""
    return f"logged to run {logged}, an evaluation of run {trained_by} (other params)"


def _project_params() -> P.Params:
    """This checkout's params, or the defaults outside one."""
    try:
        return P.load()
    except SrctlError:
        return P.Params()


def default_model() -> str:
    """The project's champion: NAME@ALIAS from params.yaml (espcn-x3@champion by default)."""
    params = _project_params()
    return f"{params.registered_name}@{params.register.alias}"


def model_uri(run_id: str | None = None, model: str | None = None) -> str:
    """`runs:/<id>/model` for --run-id; `models:/NAME@ALIAS`, `models:/NAME/VERSION` for --model."""
    if run_id and model:
        raise SrctlError("give either --run-id or --model, not both")
    if run_id:
        return f"runs:/{run_id}/{MODEL_ARTIFACT}"
    if not model or not ("@" in model or "/" in model):
        raise SrctlError(f"--model must be NAME@ALIAS or NAME/VERSION, got {model!r}")
    return f"models:/{model}"


def chosen_model_uri(run_id: str | None = None, model: str | None = None) -> str:
    """The model that --run-id / --model name; the project's champion when neither is given."""
    return model_uri(run_id, model or (None if run_id else default_model()))


def model_folder(
    run_id: str | None = None, model: str | None = None, model_dir: Path | None = None
) -> Path:
    """The local folder of the model the user named: --model-dir as is (no MLflow), else the logged
    model of --run-id / --model / the project's champion, fetched from the store."""
    if model_dir:
        if run_id or model:
            raise SrctlError("give one of --run-id, --model and --model-dir")
        if not (model_dir / "config.json").is_file():
            raise SrctlError(f"{model_dir}: not a model folder (no config.json)")
        return model_dir
    try:
        return fetch_model(chosen_model_uri(run_id, model))
    except (
        SrctlError
    ) as exc:  # no store here (a fresh clone after `dvc pull`, say): point at the pipeline's model
        pipeline_model = P.paths().model
        if run_id or model or not (pipeline_model / "config.json").is_file():
            raise
        hint = f"the pipeline's own model is here: --model-dir {os.path.relpath(pipeline_model)}"
        raise SrctlError(f"{exc}; {hint}") from exc


def run_of(uri: str) -> str:
    """The id of the training run that logged the model at `uri` (runs:/...,
    models:/NAME@ALIAS|/VERSION)."""
    if uri.startswith("runs:/"):
        return uri.split("/")[1]
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    name, at, alias = uri.removeprefix("models:/").partition("@")
    try:
        mv = (
            client.get_model_version_by_alias(name, alias)
            if at
            else client.get_model_version(*name.rsplit("/", 1))
        )
    except mlflow.exceptions.MlflowException as exc:
        raise SrctlError(f"no model {uri} in {tracking_uri()}") from exc
    return mv.run_id


def check_run(run_id: str) -> None:
    """A one-line error unless the tracking store has the run `run_id`."""
    mlflow = _mlflow()
    try:
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise SrctlError(f"no run {run_id} in {tracking_uri()}") from exc


def init_model(ref: str) -> tuple[Path, str]:
    """train.init: the folder of the logged model `ref` names (NAME@ALIAS, NAME/VERSION or a run
    id), and the id of the run that trained it."""
    uri = model_uri(model=ref) if "@" in ref or "/" in ref else model_uri(run_id=ref)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a stage's log: no bar
    try:
        return fetch_model(uri), run_of(uri)
    except SrctlError as exc:
        raise SrctlError(f"train.init {ref}: {exc}") from exc


def _cache_dir(uri: str) -> Path | None:
    """Where a run's model is kept once fetched: a run's logged model never changes, so `srctl infer
    --run-id` can skip MLflow (seconds of import and lookup) the next time. Aliases always resolve.
    """
    if not uri.startswith("runs:/"):
        return None
    return cache_dir("runs") / uri.split("/")[1]


def fetch_model(uri: str) -> Path:
    """The local folder of a logged model's weights + config (downloaded, or from the cache)."""
    cached = _cache_dir(uri)
    if cached and (cached / "config.json").is_file():
        return cached
    mlflow = _mlflow()
    tmp = Path(tempfile.mkdtemp(prefix="srctl-model-"))
    # a registered version (an alias may move) is not cached: its download lives as long as the
    # process that loads it; a run's is copied into the cache below, then removed
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp)))
    except Exception as exc:  # MLflow raises several types (MlflowException, OSError, HTTP errors)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SrctlError(f"cannot load model {uri} from {tracking_uri()}: {first}") from exc
    configs = sorted(local.rglob("config.json"))  # pyfunc keeps data_path under <model>/data/
    if not configs:
        raise SrctlError(f"{uri}: no srctl model (config.json) in it")
    if not cached:
        return configs[0].parent
    with atomic_dir(cached) as staging:
        for f in configs[0].parent.iterdir():
            shutil.copy2(f, staging / f.name)
    shutil.rmtree(tmp, ignore_errors=True)
    return cached


def _describe(client, name: str, version: str, run) -> None:
    """Tag the version with its benchmark scores and give it a one-line description, so that the
    registry page alone tells versions apart."""
    m, p, nan = run.data.metrics, run.data.params, float("nan")
    benchmark = sorted(k for k in m if k.endswith("/psnr"))  # Set5/psnr, Set5-jpeg50/psnr, ...
    for key in benchmark:
        client.set_model_version_tag(name, version, key, f"{m[key]:.2f}")
    steps = int(p.get("train.epochs", 0)) * int(p.get("train.steps_per_epoch", 0))
    jpeg = f" (LR as JPEG q{MESSENGER_QUALITY})" if p.get("train.degradation") == "real" else ""
    scores = " / ".join(f"{k.split('/')[0]} {m[k]:.2f}" for k in benchmark)
    text = (
        f"x{p.get('scale', '?')} {p.get('train.arch', '?')} "
        f"{p.get('train.degradation', 'clean')}, {steps:,} steps "
        f"(run {run.info.run_name}): "
        + (
            f"BSDS300 test{jpeg} {m[SCORE]:.2f} dB (bicubic {m.get('bicubic_psnr', nan):.2f})"
            if SCORE in m
            else "BSDS300 test not scored"  # promoted by hand before any evaluate
        )
        + (f"; {scores} dB" if scores else "")
    )
    client.update_model_version(name, version, description=text)


def _version_of(client, name: str, run_id: str, model_uri: str):
    """The run's version of model `name`, registered now if it has none: the same run registered
    again (evaluate re-run, say) reuses its version instead of adding one."""
    same = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if same:
        return same[0]
    # the client, not mlflow.register_model: that one prints its own lines to the user's terminal
    try:
        client.create_registered_model(name)
    except _mlflow().exceptions.MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    model_id = model_uri.removeprefix("models:/")
    return client.create_model_version(name, model_uri, run_id=run_id, model_id=model_id)


def register(run_id: str, model_uri: str, name: str, alias: str) -> dict:
    """Register the run's model; move `alias` to it if its PSNR beats the holder's (or none)."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    score = run.data.metrics.get(SCORE)
    if score is None:
        raise SrctlError(f"run {run_id} has no '{SCORE}' metric; run the evaluate stage first")
    version = _version_of(client, name, run_id, model_uri).version
    _describe(client, name, version, run)
    images = run.data.metrics.get("images")  # the first N BSDS300 test images (evaluate.max_images)
    why = None
    try:
        holder = client.get_model_version_by_alias(name, alias)
        best_run = client.get_run(holder.run_id)
    except mlflow.exceptions.MlflowException:
        holder = None
    if holder is not None:
        best = best_run.data.metrics.get(SCORE, float("-inf"))
        theirs = best_run.data.metrics.get("images")
        if None not in (images, theirs) and images != theirs:  # PSNRs of other pictures
            why = f"v{holder.version} was scored on {theirs:g} test images, this run on {images:g}"
        elif score <= best:
            why = f"v{holder.version} scored {best:.2f} dB"
    promoted = why is None
    if promoted:
        client.set_registered_model_alias(name, alias, version)
    return {
        "name": name,
        "version": int(version),
        SCORE: score,
        "alias": alias,
        "promoted": promoted,
        "previous_version": int(holder.version) if holder else None,
        **({"why": why} if why else {}),
    }


RUN_COLUMNS = (
    "train.arch",
    "train.degradation",
    "train.epochs",
    "train.steps_per_epoch",
    "train.batch_size",
    "train.lr",
)


def list_runs(experiment: str | None = None, sort: str = "date") -> list[dict]:
    """Training runs, newest first (or best PSNR first with sort="psnr"): id, date, scale, key
    params, PSNR, bicubic PSNR, train time."""
    if sort not in ("date", "psnr"):
        raise SrctlError(f"--sort must be date or psnr, got {sort!r}")
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    names = [experiment] if experiment else [e.name for e in client.search_experiments()]
    ids = [e.experiment_id for n in names if (e := client.get_experiment_by_name(n))]
    if experiment and not ids:
        raise SrctlError(f"no MLflow experiment named {experiment!r} in {tracking_uri()}")
    rows = []
    for run in (
        client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=1000)
        if ids
        else []
    ):
        if EVALUATES in run.data.tags:  # an evaluation of a training run listed here already
            continue
        p, m = run.data.params, run.data.metrics
        rows.append(
            {
                "run_id": run.info.run_id,
                "date": run.info.start_time,
                "status": run.info.status,
                "experiment": run.data.tags.get("dvc_exp_name", ""),
                "scale": p.get("scale", ""),
                **{k.removeprefix("train."): p.get(k, "") for k in RUN_COLUMNS},
                "psnr": m.get("psnr"),
                "bicubic_psnr": m.get("bicubic_psnr"),
                "train_seconds": m.get("train_seconds"),
            }
        )
    if sort == "psnr":
        rows.sort(key=lambda r: r["psnr"] if r["psnr"] is not None else float("-inf"), reverse=True)
    return rows


def promote(target: str, alias: str | None = None) -> dict:
    """Move `alias` (params' register.alias by default) to a model version: NAME/VERSION, or a run
    id (registered first, under params' name for the run's scale, if need be)."""
    params = _project_params()
    flag = "register.alias" if alias is None else "--alias"
    alias = params.register.alias if alias is None else alias
    P.check_register_names(params.register.model_name, alias, flag)
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    if "/" in target:
        name, _, version = target.rpartition("/")
        try:
            mv = client.get_model_version(name, version)
        except mlflow.exceptions.MlflowException as exc:
            raise SrctlError(f"no model version {target} in {tracking_uri()}") from exc
    else:
        try:
            run = client.get_run(target)
        except mlflow.exceptions.MlflowException as exc:
            raise SrctlError(f"no run {target} in {tracking_uri()}") from exc
        # the run's own scale and degradation name the model, as the register stage names it
        p = run.data.params
        name = P.registered_name(
            params.register.model_name,
            p.get("scale", params.scale),
            p.get("train.degradation", "clean"),
        )
        logged = run.outputs.model_outputs if run.outputs else []
        if not logged:
            raise SrctlError(f"run {target} has no logged model")
        mv = _version_of(client, name, target, f"models:/{logged[-1].model_id}")
        _describe(client, name, mv.version, run)
    try:
        old = client.get_model_version_by_alias(name, alias).version
    except mlflow.exceptions.MlflowException:
        old = None
    client.set_registered_model_alias(name, alias, mv.version)
    return {
        "name": name,
        "alias": alias,
        "old": int(old) if old else None,
        "new": int(mv.version),
        "run_id": mv.run_id,
    }


def serve(uri: str, host: str, port: int) -> None:
    """Become `mlflow models serve` on `uri` (this process is replaced: signals and exit code are
    its own)."""
    import sys

    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri(),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # the server runs uvicorn from this environment's bin/, activated or not
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        uri,
        "--env-manager",
        "local",
        "-h",
        host,
        "-p",
        str(port),
    ]
    os.execve(sys.executable, cmd, env)


def main() -> None:
    params, where = P.load(), P.paths()
    run = read_run(where.run_file)
    result = register(
        run["run_id"], run["model_uri"], params.registered_name, params.register.alias
    )
    write_json(where.registered, result)
    moved = (
        f"alias '{result['alias']}' -> v{result['version']}"
        if result["promoted"]
        else f"alias '{result['alias']}' unchanged ({result['why']})"
    )
    print(
        f"register: {result['name']} v{result['version']} ({SCORE} {result[SCORE]:.2f} dB), {moved}"
    )


def read_run(run_file: Path) -> dict[str, str]:
    """What train recorded of its MLflow run in models/mlflow_run.json: run_id, experiment_id
    and model_uri."""
    import json

    try:
        run = json.loads(run_file.read_text())
        return {k: str(run[k]) for k in ("run_id", "experiment_id", "model_uri")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SrctlError(f"{run_file}: no MLflow run recorded; run the train stage first") from exc


if __name__ == "__main__":
    run_main(main)
