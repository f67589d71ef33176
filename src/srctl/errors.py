"""User-facing errors: one line, no traceback, non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable


class SrctlError(Exception):
    """An error the user can act on; its message is the whole story (one line per problem)."""


def run_main(entry: Callable[[], object]) -> None:
    """Run a pipeline stage's main or the `srctl` command line: an SrctlError ends as `error:` lines
    on stderr and exit status 1, Ctrl-C as one line and 130."""
    try:
        entry()
    except SrctlError as exc:
        for line in str(exc).splitlines() or [""]:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(
            "error: interrupted (a stage that keeps a checkpoint resumes from it on the next run)",
            file=sys.stderr,
        )
        sys.exit(130)
