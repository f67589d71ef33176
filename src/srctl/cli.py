"""The `srctl` command line: a thin layer over the modules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from srctl.errors import SrctlError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def main() -> None:
    """Train, track and serve ESPCN super-resolution models (see README.md)."""


def _default_model() -> str:
    from srctl import params as P

    try:
        p = P.load()
        return f"{p.registered_name}@{p.register.alias}"
    except SrctlError:  # outside a project checkout
        return "espcn-x3@champion"


def _precision(half: bool, bf16: bool, fp32: bool, device: Optional[str]):
    """Autocast dtype: as asked, else bf16 where the hardware computes it natively (as in training)."""
    import torch

    from srctl.infer import autocast_dtype, pick_device

    if half + bf16 + fp32 > 1:
        raise SrctlError("choose one of --half, --bf16 and --fp32")
    if half or bf16:
        return torch.float16 if half else torch.bfloat16
    return None if fp32 else autocast_dtype(torch.device(device) if device else pick_device())


def _fail(exc: SrctlError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


def _quiet_mlflow() -> None:
    # keep stderr for what the user must read: no INFO lines, no download progress bars
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


RUN_ID = typer.Option(None, "--run-id", help="Use the model logged by this MLflow run.")
MODEL = typer.Option(None, "--model", help="Registered model as NAME@ALIAS or NAME/VERSION [default: <name>-x<scale>@champion].")
DEVICE = typer.Option(None, "--device", help="cpu, cuda, cuda:1, mps [default: the GPU if there is one].")
HALF = typer.Option(False, "--half", help="fp16 autocast (GPUs).")
BF16 = typer.Option(False, "--bf16", help="bf16 autocast. The default where the hardware has it (GPUs, CPUs with AVX512-BF16/AMX).")
FP32 = typer.Option(False, "--fp32", help="Full fp32: slower, differs from bf16 by at most a few levels out of 255.")
QUIET = typer.Option(False, "-q", "--quiet", help="No progress bar.")
MODEL_DIR = typer.Option(None, "--model-dir", help="A model folder, e.g. the pipeline's models/espcn (after `dvc pull`): no MLflow needed.")


def _model_uri(run_id: Optional[str], model: Optional[str]) -> str:
    """--run-id, else --model, else the project's champion, as an MLflow model URI."""
    from srctl import registry

    return registry.model_uri(run_id, None if run_id else (model or _default_model()))


def _model_dir(run_id: Optional[str], model: Optional[str], model_dir: Optional[Path] = None) -> Path:
    from srctl import registry

    if model_dir:
        if run_id or model:
            raise SrctlError("give one of --run-id, --model and --model-dir")
        if not (model_dir / "config.json").is_file():
            raise SrctlError(f"{model_dir}: not a model folder (no config.json)")
        return model_dir
    _quiet_mlflow()
    try:
        return registry.fetch_model(_model_uri(run_id, model))
    except SrctlError as exc:  # no MLflow store here (a fresh clone after `dvc pull`, say): point at the pipeline's model
        from srctl import params as P

        pipeline_model = P.project_root() / "models" / "espcn"
        if run_id or model or not (pipeline_model / "config.json").is_file():
            raise
        raise SrctlError(f"{exc}; the pipeline's own model is here: --model-dir {os.path.relpath(pipeline_model)}") from exc


@app.command()
def infer(
    images: List[str] = typer.Argument(..., help="Image files, folders of images, or glob patterns."),
    run_id: Optional[str] = RUN_ID,
    model: Optional[str] = MODEL,
    model_dir: Optional[Path] = MODEL_DIR,
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help="Output file (one input; its extension picks the format) or folder (several) [default: <stem>_x<scale>.png beside each input]."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing output files (never an input)."),
    device: Optional[str] = DEVICE,
    half: bool = HALF,
    bf16: bool = BF16,
    fp32: bool = FP32,
    tile: int = typer.Option(512, "--tile", min=16, help="Tile side in input pixels: bounds memory on huge images."),
    quiet: bool = QUIET,
) -> None:
    """Upscale images: the network upscales Y, Cb and Cr (and alpha) are upscaled bicubically."""
    import sys

    from srctl import infer as I

    try:
        paths = I.collect_inputs(images)
        problems = []
        for p in paths:
            try:
                I.check_path(p)
            except SrctlError as exc:
                problems.append(exc)
        if len(problems) == len(paths):  # nothing to do: say why before fetching a model
            for exc in problems[:-1]:
                typer.echo(f"error: {exc}", err=True)
            raise problems[-1]
        amp = _precision(half, bf16, fp32, device)
        failed = I.infer(paths, _model_dir(run_id, model, model_dir), output, force, device, amp, tile,
                         progress=not quiet and sys.stderr.isatty())
    except SrctlError as exc:
        raise _fail(exc)
    if failed:
        typer.echo(f"error: {failed} of {len(paths)} images failed", err=True)
        raise typer.Exit(1)


@app.command()
def video(
    src: Path = typer.Argument(..., help="Input video (anything FFmpeg reads)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output video [default: <stem>_x<scale>.mp4 beside the input]."),
    run_id: Optional[str] = RUN_ID,
    model: Optional[str] = MODEL,
    model_dir: Optional[Path] = MODEL_DIR,
    codec: str = typer.Option("libx264", "--codec", help="FFmpeg encoder: libx264 (H.264), libx265, png, ffv1, ..."),
    crf: int = typer.Option(18, "--crf", help="x264/x265 quality: lower is better."),
    preset: str = typer.Option("veryfast", "--preset", help="x264/x265 speed preset."),
    batch: int = typer.Option(8, "--batch", min=1, help="Frames per network batch."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output (never the input)."),
    device: Optional[str] = DEVICE,
    half: bool = HALF,
    bf16: bool = BF16,
    fp32: bool = FP32,
    quiet: bool = QUIET,
) -> None:
    """Upscale a video: frames as in `srctl infer`, in batches; audio copied; source frame rate."""
    import sys

    import torch

    from srctl import infer as I
    from srctl import model as M
    from srctl.video import upscale_video

    try:
        I.check_path(src)
        amp = _precision(half, bf16, fp32, device)
        net = M.load(_model_dir(run_id, model, model_dir), torch.device(device) if device else I.pick_device())
        dst = output or src.with_name(f"{src.stem}_x{net.scale}.mp4")
        I.output_paths([src], dst, net.scale, force)  # the same refusals as infer: never the input, no clobbering
        stats = upscale_video(src, dst, net, codec, crf, preset, batch, amp, progress=not quiet and sys.stderr.isatty())
    except SrctlError as exc:
        raise _fail(exc)
    w, h = stats["size"]
    typer.echo(f"{src} -> {dst} ({stats['frames']} frames, {w}x{h}, {stats['fps']:.1f} frames/s)")


@app.command()
def serve(
    model: Optional[str] = MODEL,
    run_id: Optional[str] = RUN_ID,
    port: int = typer.Option(5001, "--port", "-p"),
    host: str = typer.Option("127.0.0.1", "--host", help="Listen address; 0.0.0.0 exposes it to the network."),
) -> None:
    """Serve a model over HTTP: `mlflow models serve` on it (POST /invocations, base64 images in and out)."""
    import sys

    from srctl import registry

    try:
        uri = _model_uri(run_id, model)
    except SrctlError as exc:
        raise _fail(exc)
    _quiet_mlflow()
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.tracking_uri(), "MLFLOW_DISABLE_TELEMETRY": "true",
           # the server runs uvicorn from this environment's bin/, activated or not
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
           "-h", host, "-p", str(port)]
    typer.echo(f"serving {uri} on http://{host}:{port}/invocations", err=True)
    os.execve(sys.executable, cmd, env)  # become the server: signals and exit code are its own


@app.command()
def runs(
    experiment: Optional[str] = typer.Option(None, "--experiment", "-e", help="Only this MLflow experiment [default: all]."),
    sort: str = typer.Option("date", "--sort", help="date (newest first) or psnr (best first)."),
) -> None:
    """List training runs: id, date, scale, key params, PSNR vs bicubic, train time."""
    from datetime import datetime

    from rich.console import Console
    from rich.table import Table

    from srctl import registry

    _quiet_mlflow()
    try:
        rows = registry.list_runs(experiment)
    except SrctlError as exc:
        raise _fail(exc)
    if sort == "psnr":
        rows.sort(key=lambda r: r["psnr"] if r["psnr"] is not None else float("-inf"), reverse=True)
    table = Table("run id", "date", "exp", "x", "epochs", "steps/ep", "batch", "lr", "PSNR", "bicubic", "train s", "status")
    num = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        table.add_row(r["run_id"], datetime.fromtimestamp(r["date"] / 1000).strftime("%Y-%m-%d %H:%M"), r["experiment"],
                      r["scale"], r["epochs"], r["steps_per_epoch"], r["batch_size"], r["lr"], num(r["psnr"], ".2f"),
                      num(r["bicubic_psnr"], ".2f"), num(r["train_seconds"], ".0f"), r["status"])
    Console(width=200).print(table)


@app.command()
def promote(
    target: str = typer.Argument(..., help="RUN_ID or NAME/VERSION."),
    alias: str = typer.Option("champion", "--alias"),
) -> None:
    """Point the alias (champion) at a model version; a run is registered first if it is not yet."""
    from srctl import registry

    _quiet_mlflow()
    try:
        r = registry.promote(target, alias)
    except SrctlError as exc:
        raise _fail(exc)
    old = f"v{r['old']}" if r["old"] else "none"
    typer.echo(f"{r['name']}@{r['alias']}: {old} -> v{r['new']} (run {r['run_id']})")


@app.command()
def export(
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the .onnx file."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (the only one for now)."),
    run_id: Optional[str] = RUN_ID,
    model: Optional[str] = MODEL,
    model_dir: Optional[Path] = MODEL_DIR,
    check_image: Optional[Path] = typer.Option(None, "--check-image", help="Real image to compare onnxruntime with PyTorch on [default: the first BSDS300 test image in data/raw]."),
) -> None:
    """Export the network (Y in, upscaled Y out) to ONNX and check it against PyTorch with onnxruntime."""
    from srctl import model as M
    from srctl.export import export_onnx

    try:
        if fmt != "onnx":
            raise SrctlError(f"--format {fmt}: only onnx is supported")
        net = M.load(_model_dir(run_id, model, model_dir))
        if check_image is None:
            from srctl import params as P

            found = sorted((P.project_root() / "data" / "raw" / "BSDS300" / "images" / "test").glob("*.jpg"))
            if not found:
                raise SrctlError("no BSDS300 test image in data/raw: give --check-image")
            check_image = found[0]
        diff = export_onnx(net, output, check_image)
    except SrctlError as exc:
        raise _fail(exc)
    typer.echo(f"{output}: ONNX x{net.scale}; onnxruntime vs PyTorch on {check_image.name}: max abs diff {diff:.2e}")


@app.command()
def benchmark(
    run_id: Optional[str] = RUN_ID,
    model: Optional[str] = MODEL,
    model_dir: Optional[Path] = MODEL_DIR,
    device: Optional[str] = DEVICE,
    log: bool = typer.Option(True, "--log/--no-log", help="Log the numbers into the model's MLflow run (not with --model-dir)."),
) -> None:
    """PSNR / SSIM of a logged model and of bicubic on Set5, Set14, BSD100 (folders from params.yaml)."""
    from srctl import benchmark as B
    from srctl import model as M
    from srctl.infer import pick_device
    from srctl import params as P
    from srctl import registry

    _quiet_mlflow()
    try:
        source = None if model_dir else registry.run_of(_model_uri(run_id, model))  # the run to log into
        net = M.load(_model_dir(run_id, model, model_dir), device or pick_device())
        try:
            params, root = P.load(), P.repo_root()
        except SrctlError:  # outside a project checkout: the default set folders, from here
            params, root = P.Params(), Path.cwd()
        sets = B.set_folders(params, root)
        results = B.benchmark(net, sets)
        if log and source:
            registry.log_evaluation(source, B.flat(results), {})
    except SrctlError as exc:
        raise _fail(exc)
    typer.echo(B.report(results, sets, net.scale, f"ESPCN (run {source[:8]})" if source else f"ESPCN ({model_dir})"))


@app.command()
def compare(
    image: Path = typer.Argument(..., help="A (small) image to upscale."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="[default: <stem>_compare.png beside it]"),
    run_id: Optional[str] = RUN_ID,
    model: Optional[str] = MODEL,
    model_dir: Optional[Path] = MODEL_DIR,
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
) -> None:
    """Write a picture: bicubic | SR side by side, and a zoomed-in crop of each below."""
    from srctl import infer as I
    from srctl import model as M
    from srctl.compare import compare_picture

    try:
        img = I.open_image(image)
        dst = output or image.with_name(f"{image.stem}_compare.png")
        I.output_paths([image], dst, 1, force)  # the same refusals as infer: never the input, no clobbering
        sheet = compare_picture(M.load(_model_dir(run_id, model, model_dir)), img)
        I.save_image(sheet, dst)
    except SrctlError as exc:
        raise _fail(exc)
    typer.echo(f"{image} -> {dst} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    app()
