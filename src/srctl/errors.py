"""User-facing errors: one line, no traceback, non-zero exit."""

from __future__ import annotations

import sys
from typing import Callable


class SrctlError(Exception):
    """An error the user can act on; its message is the whole story."""


def run_stage(main: Callable[[], object]) -> None:
    """Entry point of a pipeline stage (`python -m srctl.<stage>`)."""
    try:
        main()
    except SrctlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted (a stage that keeps a checkpoint resumes from it on the next run)", file=sys.stderr)
        sys.exit(130)
