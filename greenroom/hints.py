"""Commands printed as hints, written so that they work as printed: pasted into a shell in a
checkout of greenroom (the quick start's `uv run`), with arguments quoted where they need it."""

from __future__ import annotations

import shlex

#: How the README's quick start runs the command line.
PROGRAM = "uv run greenroom"


def command(*args: str) -> str:
    """`uv run greenroom ARGS…`, each argument quoted for a POSIX shell if it needs it."""
    return " ".join([PROGRAM, *(shlex.quote(a) for a in args)])
