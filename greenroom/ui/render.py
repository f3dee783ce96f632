"""Templates: one Jinja2 environment with autoescape always on (run inputs, errors and labels
are anyone's text), and the filters the pages share."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES = Path(__file__).parent / "templates"
#: Finished states: a page about a run in one of them no longer polls.
FINISHED = frozenset({"succeeded", "failed", "cancelled"})


def when(moment: float | None) -> str:
    """A Unix time as UTC, to the second."""
    if moment is None:
        return "—"
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S")


def took(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def interval(seconds: float) -> str:
    """A schedule's interval as it is written (90s, 15m, 1h, 1d) when it is whole."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:g}s"


def pretty(value: Any) -> str:
    """JSON for a <pre>: escaped by autoescape where it is shown."""
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


ENV = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=True,  # every template, whatever its name
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(when=when, took=took, interval=interval, pretty=pretty)
ENV.globals["FINISHED"] = FINISHED


def page(
    request: Request, template: str, context: dict[str, Any], status: int = 200
) -> HTMLResponse:
    """A rendered template; `request` gives it the page's path for the navigation."""
    html = ENV.get_template(template).render(path=request.url.path, **context)
    return HTMLResponse(html, status_code=status)
