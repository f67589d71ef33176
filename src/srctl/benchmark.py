"""Stage `benchmark`: the model and bicubic on the SR literature's test sets (Set5, Set14, BSD100).

Scored exactly as `evaluate` scores BSDS300 (see evaluate.py), at the model's scale. A set whose folder
is missing is reported as absent, never silently dropped. Also `srctl benchmark` for any logged model.
"""

from __future__ import annotations

from pathlib import Path

from srctl import model as M
from srctl import params as P
from srctl import registry
from srctl.errors import run_stage
from srctl.evaluate import evaluate
from srctl.files import write_json
from srctl.infer import pick_device

IMAGES = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".ppm"}


def set_folders(params: P.Params, root: Path) -> dict[str, Path]:
    """params.yaml's benchmark sets, relative paths taken from `root` (the repo, see params.repo_root)."""
    return {name: root / folder for name, folder in params.benchmark.sets.items()}


def benchmark(net: M.ESPCN, sets: dict[str, Path]) -> dict[str, dict | None]:
    """Per set: mean PSNR/SSIM of the model and of bicubic, and the image count; None if absent."""
    results: dict[str, dict | None] = {}
    for name, folder in sets.items():
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGES) if folder.is_dir() else []
        results[name] = {**evaluate(net, paths)[0], "images": len(paths)} if paths else None
    return results


def flat(results: dict[str, dict | None]) -> dict[str, float]:
    """`Set5/psnr`-style names for MLflow (its UI groups them by set)."""
    return {f"{name}/{k}": v for name, r in results.items() if r for k, v in r.items()}


def table(results: dict[str, dict | None], scale: int, label: str = "ESPCN") -> str:
    """A Markdown table, PSNR (dB) / SSIM per set: the bicubic row, then the model's."""
    def cell(r, prefix):
        return f"{r[prefix + 'psnr']:.2f} / {r[prefix + 'ssim']:.4f}" if r else "absent"

    lines = [
        f"| x{scale} | " + " | ".join(results) + " |",
        "| --- |" + " --- |" * len(results),
        "| bicubic | " + " | ".join(cell(r, "bicubic_") for r in results.values()) + " |",
        f"| {label} | " + " | ".join(cell(r, "") for r in results.values()) + " |",
    ]
    return "\n".join(lines)


def report(results: dict[str, dict | None], sets: dict[str, Path], scale: int, label: str) -> str:
    absent = [f"{name}: absent (no images in {sets[name]})" for name, r in results.items() if r is None]
    return "\n".join([table(results, scale, label), *absent])


def main() -> None:
    params, root = P.load(), P.project_root()
    net = M.load(root / "models" / "espcn", pick_device())
    sets = set_folders(params, P.repo_root())  # not the copy `dvc exp run --temp/--queue` works in
    results = benchmark(net, sets)
    write_json(root / "metrics" / "benchmark.json", {"scale": net.scale, **{k: v or {"images": 0} for k, v in results.items()}})
    registry.log_evaluation(registry.read_run(root)["run_id"], flat(results), {})
    print(report(results, sets, net.scale, "ESPCN (this run)"))


if __name__ == "__main__":
    run_stage(main)
