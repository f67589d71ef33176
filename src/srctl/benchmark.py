"""Stage `benchmark`: the model and bicubic on the SR literature's test sets (Set5, Set14, BSD100).

Scored exactly as `evaluate` scores BSDS300 (see evaluate.py), at the model's scale, with clean LR
inputs and with LR inputs saved as JPEG quality 50, 4:2:0 (what a messenger sends). A set whose
folder is missing is reported as absent, never silently dropped. Also `srctl benchmark` for any
logged model."""

from __future__ import annotations

from pathlib import Path

from srctl import model as M
from srctl import params as P
from srctl import registry
from srctl.degrade import MESSENGER_QUALITY
from srctl.device import pick_device
from srctl.errors import SrctlError, run_main
from srctl.evaluate import evaluate
from srctl.files import write_json
from srctl.pictures import IMAGE_SUFFIXES

JPEG = f"-jpeg{MESSENGER_QUALITY}"  # the rows of LR inputs saved as a messenger's JPEG


def set_folders(params: P.Params, root: Path) -> dict[str, Path]:
    """params.yaml's benchmark sets, relative paths taken from `root` (the repo, see
    params.repo_root)."""
    return {name: root / folder for name, folder in params.benchmark.sets.items()}


def _pictures(folder: Path) -> list[Path]:
    """The set's pictures, sorted; none if the folder is missing."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def benchmark(net: M.ESPCN, sets: dict[str, Path]) -> dict[str, dict | None]:
    """Per set, with clean LR inputs (`Set5`) and with LR inputs saved as a messenger's JPEG
    (`Set5-jpeg50`): mean PSNR/SSIM of the model and of bicubic, and the image count; None if
    absent."""
    results: dict[str, dict | None] = {}
    for name, folder in sets.items():
        paths = _pictures(folder)
        for suffix, quality in (("", None), (JPEG, MESSENGER_QUALITY)):
            results[name + suffix] = (
                {**evaluate(net, paths, quality=quality)[0], "images": len(paths)}
                if paths
                else None
            )
    return results


def flat(results: dict[str, dict | None]) -> dict[str, float]:
    """`Set5/psnr`-style names for MLflow (its UI groups them by set)."""
    return {f"{name}/{k}": v for name, r in results.items() if r for k, v in r.items()}


def table(results: dict[str, dict | None], scale: int, label: str = "ESPCN") -> str:
    """A Markdown table, PSNR (dB) / SSIM per set: bicubic and the model on clean LR inputs, then
    on the messenger's JPEGs."""
    names = [k for k in results if not k.endswith(JPEG)]

    def cells(suffix, prefix):
        rs = [results.get(n + suffix) for n in names]
        return " | ".join(
            f"{r[prefix + 'psnr']:.2f} / {r[prefix + 'ssim']:.4f}" if r else "absent" for r in rs
        )

    lines = [f"| x{scale} | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for suffix, inputs in (("", ""), (JPEG, f", LR as JPEG q{MESSENGER_QUALITY}")):
        if any(n + suffix in results for n in names):
            lines.append(f"| bicubic{inputs} | " + cells(suffix, "bicubic_") + " |")
            lines.append(f"| {label}{inputs} | " + cells(suffix, "") + " |")
    return "\n".join(lines)


def report(results: dict[str, dict | None], sets: dict[str, Path], scale: int, label: str) -> str:
    absent = [
        f"{name}: absent (no images in {sets[name]})" for name in sets if results[name] is None
    ]
    return "\n".join([table(results, scale, label), *absent])


def benchmark_model(
    run_id: str | None, model: str | None, model_dir: Path | None, device: str | None, log: bool
) -> str:
    """`srctl benchmark`: the report for the model the user named; its numbers are logged into the
    MLflow run that made it (unless `log` is off or the model is a plain folder)."""
    try:
        params, root = P.load(), P.repo_root()
    except SrctlError:  # outside a project checkout: the default set folders, from here
        params, root = P.Params(), Path.cwd()
    sets = set_folders(params, root)
    if not any(_pictures(folder) for folder in sets.values()):
        found = ", ".join(str(folder) for folder in sets.values())
        raise SrctlError(f"no benchmark set here (no images in {found}): run it in the project")
    source = None if model_dir else registry.run_of(registry.chosen_model_uri(run_id, model))
    if log and source:
        registry.check_run(source)  # before the scoring, not after it
    net = M.load(registry.model_folder(run_id, model, model_dir), pick_device(device))
    results = benchmark(net, sets)
    label = f"ESPCN (run {source[:8]})" if source else f"ESPCN ({model_dir})"
    lines = report(results, sets, net.scale, label)
    if log and source:
        logged = registry.log_evaluation(source, flat(results), {}, params.flat("benchmark"))
        if note := registry.evaluation_note(logged, source):
            lines += f"\n{note}"
    return lines


def main() -> None:
    params, where = P.load(), P.paths()
    net = M.load(where.model, pick_device())
    sets = set_folders(params, P.repo_root())  # not the copy `dvc exp run --temp/--queue` works in
    results = benchmark(net, sets)
    absent_as_zero = {k: v or {"images": 0} for k, v in results.items()}
    write_json(where.metrics / "benchmark.json", {"scale": net.scale, **absent_as_zero})
    trained_by = registry.read_run(where.run_file)["run_id"]
    logged = registry.log_evaluation(trained_by, flat(results), {}, params.flat("benchmark"))
    print(report(results, sets, net.scale, "ESPCN (this run)"))
    if note := registry.evaluation_note(logged, trained_by):
        print(f"benchmark: {note}")


if __name__ == "__main__":
    run_main(main)
