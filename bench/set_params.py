"""Write a params.yaml with `key.sub=value` overrides (values read as YAML), as `dvc exp run -S`.

Usage: python bench/set_params.py SRC DST key.sub=VALUE ...   (DST may be SRC: a copy's own params)
Used by bench/gpu.sh (on its copies, never the checkout's) and bench/time_to_quality.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def set_params(src: Path, dst: Path, overrides: list[str]) -> Path:
    values = yaml.safe_load(Path(src).read_text())
    for item in overrides:
        key, _, raw = item.partition("=")
        *parents, last = key.split(".")
        node = values
        for part in parents:
            node = node[part]
        node[last] = yaml.safe_load(raw)
    Path(dst).write_text(yaml.safe_dump(values, sort_keys=False))  # keys stay in the file's order
    return Path(dst)


if __name__ == "__main__":
    set_params(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
