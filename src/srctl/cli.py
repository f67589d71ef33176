"""The `srctl` command line: parses options, calls the modules, prints their results.

Errors are SrctlError raised by the modules; `main` turns each into `error:` lines
(errors.run_main)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from srctl.errors import SrctlError, run_main

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def callback() -> None:
    """Train, track and serve ESPCN super-resolution models (see README.md)."""
    from srctl import registry

    registry.quiet()


RUN_ID = typer.Option(None, "--run-id", help="Use the model logged by this MLflow run.")
MODEL = typer.Option(
    None,
    "--model",
    help="Registered model as NAME@ALIAS or NAME/VERSION.",
    show_default="the project's champion, espcn-x<scale>@champion",
)
MODEL_DIR = typer.Option(
    None,
    "--model-dir",
    show_default="none",
    help="A model folder, e.g. the pipeline's models/espcn (after `dvc pull`): no MLflow needed.",
)
DEVICE = typer.Option(
    None, "--device", help="cpu, cuda, cuda:1, mps.", show_default="the GPU if there is one"
)
HALF = typer.Option(False, "--half", help="fp16 autocast (GPUs).")
BF16 = typer.Option(
    False,
    "--bf16",
    help="bf16 autocast: the default on GPUs and CPUs with AMX (`srctl video`: AVX512-BF16 too).",
)
FP32 = typer.Option(
    False,
    "--fp32",
    help="Full fp32 (within a few levels of 255 of bf16); `srctl infer` runs it on onnxruntime on "
    "the CPU, which starts ~2 s sooner than PyTorch.",
)
QUIET = typer.Option(False, "-q", "--quiet", help="No progress bar.")
FORCE = typer.Option(False, "--force", help="Overwrite existing output files (never an input).")
SIZE = typer.Option(
    None,
    "--size",
    show_default="the model's scale",
    help="Output size WxH, or one side (W or xH) keeping the aspect ratio: the network's result "
    "resized to it (bicubic, antialiased).",
)


def _precision(half: bool, bf16: bool, fp32: bool) -> str | None:
    if half + bf16 + fp32 > 1:
        raise SrctlError("choose one of --half, --bf16 and --fp32")
    return "fp16" if half else "bf16" if bf16 else "fp32" if fp32 else None


def _progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


@app.command()
def infer(
    images: list[str] = typer.Argument(
        ..., help="Image files, folders of images, or glob patterns."
    ),
    run_id: str | None = RUN_ID,
    model: str | None = MODEL,
    model_dir: Path | None = MODEL_DIR,
    output: str | None = typer.Option(
        None,
        "-o",
        "--output",
        show_default="<stem>_x<scale>.png beside each input",
        help="Output file (one input; its extension picks the format) or folder (several inputs, "
        "a folder or a pattern, or a name ending with /): <stem>.png in it.",
    ),
    force: bool = FORCE,
    device: str | None = DEVICE,
    half: bool = HALF,
    bf16: bool = BF16,
    fp32: bool = FP32,
    tile: int = typer.Option(
        512, "--tile", min=16, help="Tile side in input pixels: bounds memory on huge images."
    ),
    size: str | None = SIZE,
    quiet: bool = QUIET,
) -> None:
    """Upscale images: the network upscales Y, Cb and Cr (and alpha) are upscaled bicubically."""
    from srctl import infer as I
    from srctl import registry

    target = I.parse_size(size) if size else None
    paths = I.collect_inputs(images)
    I.check_inputs(paths)  # before fetching a model
    precision = _precision(half, bf16, fp32)
    folder = registry.model_folder(run_id, model, model_dir)
    progress = _progress(quiet)
    run = I.engine(folder, device, precision, tile, target, progress)
    failed = I.infer(paths, run, output, force, progress, I.many_inputs(images))
    if failed:
        raise SrctlError(f"{failed} of {len(paths)} images failed")


@app.command()
def video(
    src: str = typer.Argument(
        ...,
        help="Input video: a file FFmpeg reads, a stream's URL (rtsp://, srt://, udp://, http://, "
        "...) or - for standard input. Ctrl-C ends a stream: what came is upscaled and written.",
    ),
    output: str | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Output video; its suffix picks the container. A folder (it exists, or the name ends "
        "with /): the default name in it. -: Matroska to standard output (to a player).",
        show_default="<stem>_x<scale>.mp4 beside the input (.mkv for a .mkv)",
    ),
    run_id: str | None = RUN_ID,
    model: str | None = MODEL,
    model_dir: Path | None = MODEL_DIR,
    codec: str = typer.Option(
        "libx264", "--codec", help="FFmpeg encoder: libx264 (H.264), libx265, png, ffv1, ..."
    ),
    crf: int = typer.Option(18, "--crf", help="x264/x265 quality: lower is better."),
    preset: str = typer.Option("veryfast", "--preset", help="x264/x265 speed preset."),
    batch: int | None = typer.Option(
        None,
        "--batch",
        min=1,
        help="Frames per network batch.",
        show_default="8; 1 for a stream, each frame out as soon as it is upscaled",
    ),
    encoders: int = typer.Option(
        1,
        "--encoders",
        min=1,
        help="Encoders at once, each on 2-second segments (each starts on a keyframe), joined in "
        "order: for when one encoder is slower than the network (4K on a GPU).",
    ),
    realtime: bool = typer.Option(
        False,
        "--realtime",
        help="Keep up with a live input (a call, a game) that comes faster than this machine "
        "upscales: frames that wait meanwhile are dropped (counted), so the delay stays short.",
    ),
    force: bool = FORCE,
    device: str | None = DEVICE,
    half: bool = HALF,
    bf16: bool = BF16,
    fp32: bool = FP32,
    size: str | None = SIZE,
    quiet: bool = QUIET,
) -> None:
    """Upscale a video: frames as in `srctl infer`, in batches; audio and subtitles copied; source
    frame rate."""
    from srctl import device as D
    from srctl import infer as I
    from srctl import model as M
    from srctl import registry
    from srctl.video import is_stream, upscale_video

    target = I.parse_size(size) if size else None
    if not is_stream(src):
        I.check_path(Path(src), folder="is a folder, not a video")
    dev = D.pick_device(device)
    amp = D.precision(_precision(half, bf16, fp32), dev)
    net = M.load(registry.model_folder(run_id, model, model_dir), dev)
    stats = upscale_video(
        src,
        output,
        net,
        codec,
        crf,
        preset,
        batch,
        amp,
        progress=_progress(quiet),
        force=force,
        size=target,
        encoders=encoders,
        realtime=realtime,
    )
    w, h = stats["size"]
    busy = ", ".join(f"{k} {v:.1f} s" for k, v in stats["busy"].items() if v >= 0.05)
    scaled = f"; {stats['scaled']} of another size scaled to the first's" if stats["scaled"] else ""
    left = ", ".join(stats["left_out"])
    them = "them" if len(stats["left_out"]) > 1 else "it"
    left = f"; left out, as {Path(stats['dst']).suffix} cannot hold {them}: {left}" if left else ""
    ended = "; the input ended by Ctrl-C" if stats["ended_by_ctrl_c"] else ""
    ended += f"; {stats['dropped']} dropped to keep up" if stats["dropped"] else ""
    typer.echo(
        f"{src} -> {stats['dst']} ({stats['frames']} frames{scaled}, {w}x{h}, "
        f"{stats['fps']:.1f} frames/s" + (f"; working: {busy}" if busy else "") + f"{left}{ended})",
        err=stats["dst"] == "-",  # standard output carries the video
    )
    bad, cut = stats["damaged"], stats["cut_short"]
    if bad["packets"] or bad["frames"]:
        typer.echo(
            f"warning: {src} is damaged: video packets skipped (could not be decoded): "
            f"{bad['packets']}; frames concealed (as players show them): {bad['frames']}",
            err=True,
        )
    if cut:
        typer.echo(
            f"warning: {src} ends at {cut[0]:.1f} s of the {cut[1]:.1f} s its header gives: "
            "was it cut short?",
            err=True,
        )


def _check_listen(host: str, port: int) -> None:
    """A one-line error where the server could not listen (a port in use, an unknown host), not
    MLflow's traceback after a line that says it serves."""
    import socket

    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            s.bind(address)
    except OSError as exc:  # (socket.gaierror included)
        why = exc.strerror or exc
        msg = f"{host}:{port}: cannot listen there ({why}); choose another --port"
        raise SrctlError(msg) from exc


@app.command()
def serve(
    model: str | None = MODEL,
    run_id: str | None = RUN_ID,
    port: int = typer.Option(5001, "--port", "-p"),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Listen address; 0.0.0.0 exposes it to the network."
    ),
) -> None:
    """Serve a model over HTTP with `mlflow models serve` (POST base64 images to /invocations)."""
    from srctl import registry

    _check_listen(host, port)
    uri = registry.chosen_model_uri(run_id, model)
    registry.check_run(registry.run_of(uri))  # a one-line error, not the server's traceback
    typer.echo(f"serving {uri} on http://{host}:{port}/invocations", err=True)
    registry.serve(uri, host, port)


@app.command()
def runs(
    experiment: str | None = typer.Option(
        None, "--experiment", "-e", help="Only this MLflow experiment.", show_default="all"
    ),
    sort: str = typer.Option("date", "--sort", help="date (newest first) or psnr (best first)."),
) -> None:
    """List training runs: id, date, scale, key params, PSNR vs bicubic, train time.

    data is the degradation trained on: clean, or real (whose PSNR is on JPEG q50 inputs)."""
    import shutil
    from datetime import datetime

    from rich.console import Console
    from rich.table import Table

    from srctl import registry

    rows = registry.list_runs(experiment, sort)
    if not rows:
        typer.echo(f"no runs in {registry.tracking_uri()}")
        return
    num = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    cells = {
        "run id": [r["run_id"] for r in rows],
        "date": [datetime.fromtimestamp(r["date"] / 1000).strftime("%Y-%m-%d %H:%M") for r in rows],
        "exp": [r["experiment"] for r in rows],
        "x": [r["scale"] for r in rows],
        "arch": [r["arch"] for r in rows],
        "data": [r["degradation"] for r in rows],
        "epochs": [r["epochs"] for r in rows],
        "steps/ep": [r["steps_per_epoch"] for r in rows],
        "batch": [r["batch_size"] for r in rows],
        "lr": [r["lr"] for r in rows],
        "PSNR": [num(r["psnr"], ".2f") for r in rows],
        "bicubic": [num(r["bicubic_psnr"], ".2f") for r in rows],
        "train s": [num(r["train_seconds"], ".0f") for r in rows],
        "status": [r["status"] for r in rows],
    }
    cells = {h: ["" if v is None else str(v) for v in col] for h, col in cells.items()}

    def width(headers: list[str]) -> int:  # of rich's table: a border and 2 spaces a column
        return 1 + sum(3 + max(len(h), *map(len, cells[h])) for h in headers)

    # a terminal (or COLUMNS) narrower than the table: the columns least asked for go first;
    # piped on, every column
    fit = shutil.get_terminal_size((0, 0)).columns
    shown, left_out = list(cells), []
    for h in "exp steps/ep batch status arch bicubic lr x data".split() + ["train s"]:
        if not fit or width(shown) <= fit:
            break
        shown.remove(h)
        left_out.append(h)
    table = Table(*shown)
    for i in range(len(rows)):
        table.add_row(*(cells[h][i] for h in shown))
    Console(width=max(fit, width(shown))).print(table)
    if left_out:
        typer.echo(f"({', '.join(left_out)} left out to fit {fit} columns)")


@app.command()
def promote(
    target: str = typer.Argument(..., help="RUN_ID or NAME/VERSION."),
    alias: str | None = typer.Option(
        None,
        "--alias",
        help="The alias to move (staging, ...): letters, digits, _ or -.",
        show_default="register.alias in params.yaml: champion",
    ),
) -> None:
    """Point the alias (champion) at a model version; a run is registered first if it is not yet."""
    from srctl import registry

    r = registry.promote(target, alias)
    old = f"v{r['old']}" if r["old"] else "none"
    typer.echo(f"{r['name']}@{r['alias']}: {old} -> v{r['new']} (run {r['run_id']})")


@app.command()
def export(
    output: str = typer.Option(..., "-o", "--output", help="Where to write the .onnx file."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (the only one for now)."),
    run_id: str | None = RUN_ID,
    model: str | None = MODEL,
    model_dir: Path | None = MODEL_DIR,
    check_image: Path | None = typer.Option(
        None,
        "--check-image",
        help="Real image to compare onnxruntime with PyTorch on.",
        show_default="the first BSDS300 test image in data/raw",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
) -> None:
    """Export the network (Y in, upscaled Y out) to ONNX; check it with onnxruntime vs PyTorch."""
    from srctl import export as E
    from srctl import model as M
    from srctl import registry

    if fmt != "onnx":
        raise SrctlError(f"--format {fmt}: only onnx is supported")
    check_image = check_image or E.default_check_image()
    load_net = lambda: M.load(registry.model_folder(run_id, model, model_dir))  # noqa: E731
    net, diff = E.export_onnx(output, check_image, force, load_net)
    typer.echo(
        f"{output}: ONNX x{net.scale}; onnxruntime vs PyTorch on {check_image.name}: "
        f"max abs diff {diff:.2e}"
    )


@app.command()
def benchmark(
    run_id: str | None = RUN_ID,
    model: str | None = MODEL,
    model_dir: Path | None = MODEL_DIR,
    device: str | None = DEVICE,
    log: bool = typer.Option(
        True,
        "--log/--no-log",
        help="Log the numbers into the model's MLflow run (not with --model-dir).",
    ),
) -> None:
    """PSNR / SSIM of a model and of bicubic on Set5, Set14, BSD100 (folders in params.yaml)."""
    from srctl.benchmark import benchmark_model

    typer.echo(benchmark_model(run_id, model, model_dir, device, log))


@app.command()
def compare(
    image: Path = typer.Argument(..., help="A (small) image to upscale."),
    output: str | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Output image, or a folder (it exists, or the name ends with /).",
        show_default="<stem>_compare.png beside it",
    ),
    run_id: str | None = RUN_ID,
    model: str | None = MODEL,
    model_dir: Path | None = MODEL_DIR,
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
) -> None:
    """Write a picture: bicubic | SR side by side, and a zoomed-in crop of each below."""
    from srctl import model as M
    from srctl import registry
    from srctl.compare import write_comparison

    load_net = lambda: M.load(registry.model_folder(run_id, model, model_dir))  # noqa: E731
    dst, sheet = write_comparison(image, output, force, load_net)
    typer.echo(f"{image} -> {dst} ({sheet.width}x{sheet.height})")


def _terminate(signum, frame):
    raise KeyboardInterrupt  # as Ctrl-C: what a command was writing is removed on the way out


def main() -> None:
    """The `srctl` entry point. SIGTERM (`kill`, `timeout`, a service manager) ends a command as
    Ctrl-C does: it left `srctl video`'s half-written temporary file behind."""
    import signal

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    run_main(app)


if __name__ == "__main__":
    main()
