"""Starting the processes that hold PostgreSQL workers' liveness locks (liveness_process.py).

Standard library only: `greenroom worker` starts its lock process before it imports psycopg and
opens its store, and the process's own start (Python and psycopg, about 0.1 s) goes on meanwhile.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_SCRIPT = str(Path(__file__).with_name("liveness_process.py"))

#: One started ahead of the worker that will use it: it waits for its lock's details on stdin.
_ahead: subprocess.Popen[bytes] | None = None


def start_ahead() -> None:
    global _ahead
    if _ahead is None:
        _ahead = _new()


def spawn() -> subprocess.Popen[bytes]:
    """The process started ahead, or a new one."""
    global _ahead
    process, _ahead = _ahead or _new(), None
    return process


def _new() -> subprocess.Popen[bytes]:
    # -P: the script's folder (greenroom/storage) must not shadow modules on sys.path.
    return subprocess.Popen(
        [sys.executable, "-P", _SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
