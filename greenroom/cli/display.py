"""How the commands print times, states and values."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.markup import escape

from greenroom.model import RunState

STATE_STYLE = {
    RunState.QUEUED: "cyan",
    RunState.PAUSED: "bright_black",
    RunState.DELAYED: "blue",
    RunState.RUNNING: "yellow",
    RunState.SUCCEEDED: "green",
    RunState.FAILED: "red",
    RunState.CANCELLED: "magenta",
}


def ago(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    secs = max(now - at, 0.0)
    if secs < 60:
        return f"{secs:.1f}s ago"
    if secs < 3600:
        return f"{secs / 60:.0f}m ago"
    if secs < 86400:
        return f"{secs / 3600:.1f}h ago"
    return f"{secs / 86400:.1f}d ago"


def when(at: float | None) -> str:
    """Local time with its UTC offset, to the millisecond: the one way times are printed."""
    if at is None:
        return "-"
    return datetime.fromtimestamp(at).astimezone().isoformat(sep=" ", timespec="milliseconds")


def seconds(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "-"
    return f"{end - start:.2f}s"


def number(value: float | None) -> str:
    """A setting: "-" when unset, no ".0" on whole numbers."""
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def state_text(state: RunState) -> str:
    return f"[{STATE_STYLE[state]}]{state.value}[/]"


def short_json(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return escape(text if len(text) <= limit else text[: limit - 1] + "…")


def full_json(value: Any) -> str:
    """A value whole, indented: what `runs show` owes someone reading a run's input or output."""
    return escape(json.dumps(value, indent=2, ensure_ascii=False))


def short(text: str, limit: int = 80) -> str:
    one_line = " ".join(text.split())
    return escape(one_line if len(one_line) <= limit else one_line[: limit - 1] + "…")
