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


@app.command()
def infer(
    images: List[Path] = typer.Argument(..., help="Image files to upscale."),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Use the model logged by this MLflow run."),
    model: Optional[str] = typer.Option(
        None, "--model", help="Registered model as NAME@ALIAS or NAME/VERSION [default: <name>-x<scale>@champion]."
    ),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help="Output file (one input) or folder (several) [default: <stem>_x<scale>.png beside each input]."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing output files (never an input)."),
) -> None:
    """Upscale images: the network upscales Y, Cb and Cr are upscaled bicubically."""
    from srctl import infer as I
    from srctl import registry

    # keep stderr for what the user must read: no INFO lines, no download progress bars
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    try:
        problems = []
        for p in images:
            try:
                I.check_path(p)
            except SrctlError as exc:
                problems.append(exc)
        if len(problems) == len(images):  # nothing to do: say why before fetching a model
            for exc in problems[:-1]:
                typer.echo(f"error: {exc}", err=True)
            raise problems[-1]
        uri = registry.model_uri(run_id, None if run_id else (model or _default_model()))
        failed = I.infer(images, registry.fetch_model(uri), output, force)
    except SrctlError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    if failed:
        typer.echo(f"error: {failed} of {len(images)} images failed", err=True)
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
