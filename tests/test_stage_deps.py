"""dvc.yaml's stages list as deps exactly the srctl modules their command runs, so `dvc repro`
reruns a stage when any of its code changes. The set is derived from the code: every `import` and
`from ... import` of srctl, at module level or inside functions, followed transitively."""

from __future__ import annotations

import ast
import copy

import yaml

from conftest import ROOT

SRC = ROOT / "src" / "srctl"


def _file(module: str):
    """src/srctl/x.py for srctl.x, src/srctl/__init__.py for srctl; None for a name that is no
    module."""
    parts = module.split(".")[1:]
    path = SRC.joinpath(*parts).with_suffix(".py") if parts else SRC / "__init__.py"
    return path if path.is_file() else None


def _imported(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {n for n in names if n == "srctl" or n.startswith("srctl.")}


def code_of(module: str) -> set[str]:
    """The repo paths of every srctl module that running `python -m <module>` can import."""
    seen, todo = set(), [module, "srctl"]  # `python -m srctl.x` imports the package first
    while todo:
        path = _file(todo.pop())
        if path and path not in seen:
            seen.add(path)
            todo += _imported(path)
    return {p.relative_to(ROOT).as_posix() for p in seen}


def mismatches(dvc: dict) -> dict[str, dict[str, list[str]]]:
    """Per stage: srctl modules its command runs that deps miss, and srctl deps it does not run."""
    found = {}
    for name, stage in dvc["stages"].items():
        module = stage["cmd"].removeprefix("python -m ")
        listed = {d for d in stage.get("deps", []) if d.startswith("src/srctl/")}
        needed = code_of(module)
        if listed != needed:
            found[name] = {"missing": sorted(needed - listed), "not run": sorted(listed - needed)}
    return found


def _dvc() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_every_stage_lists_exactly_the_code_it_runs():
    dvc = _dvc()
    assert all(s["cmd"].startswith("python -m srctl.") for s in dvc["stages"].values())
    assert mismatches(dvc) == {}


def test_a_missing_or_extra_module_is_caught():
    dvc = _dvc()
    broken = copy.deepcopy(dvc)
    deps = broken["stages"]["train"]["deps"]
    deps.remove("src/srctl/device.py")  # imported by train.py itself
    deps.remove("src/srctl/color.py")  # imported through prepare.py: a transitive import counts too
    broken["stages"]["download"]["deps"].append("src/srctl/video.py")
    assert mismatches(broken) == {
        "train": {"missing": ["src/srctl/color.py", "src/srctl/device.py"], "not run": []},
        "download": {"missing": [], "not run": ["src/srctl/video.py"]},
    }


def test_lazy_imports_inside_functions_count():
    # the CLI imports each command's modules inside the command's function
    assert {"src/srctl/video.py", "src/srctl/benchmark.py"} <= code_of("srctl.cli")
    assert "src/srctl/video.py" not in code_of("srctl.benchmark")


def test_arrows_point_one_way():
    # training never imports inference; the model and the metrics know no MLflow; nothing imports
    # the CLI
    inference = {"src/srctl/infer.py", "src/srctl/upscale.py", "src/srctl/runtime.py"}
    assert not inference & code_of("srctl.train")
    assert "src/srctl/registry.py" not in code_of("srctl.model") | code_of("srctl.metrics")
    assert not any(
        "src/srctl/cli.py" in code_of(f"srctl.{p.stem}")
        for p in SRC.glob("*.py")
        if p.stem != "cli"
    )
