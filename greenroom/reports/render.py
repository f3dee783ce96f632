"""Reports as files: HTML (the console's look, its CSS inlined so a mail client shows it, charts
as inline SVG: no scripts, no remote images), CSV with every row, and PDF where WeasyPrint is
installed. Tables in HTML stop at
gather.TOP rows; the CSV files are the full data."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from greenroom.reports.gather import TOP
from greenroom.schedules.spec import zone
from greenroom.storage.reports import FileBody

TEMPLATES = Path(__file__).parent / "templates"
CONSOLE_CSS = Path(__file__).parent.parent / "ui" / "static" / "console.css"
HTML = "text/html; charset=utf-8"
CSV = "text/csv; charset=utf-8"
PDF = "application/pdf"


@cache
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["took"] = took
    env.filters["percent"] = percent
    env.filters["money"] = money
    env.globals["css"] = CONSOLE_CSS.read_text()
    env.globals["bars"] = bars
    return env


def took(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f} %"


def money(amount: float | None, currency: str | None = None) -> str:
    if amount is None:
        return "—"
    return f"{amount:,.2f}" + (f" {currency}" if currency else "")


def bars(
    items: Sequence[tuple[str, float]], *, maximum: float | None = None, unit: str = ""
) -> str:
    """A horizontal bar chart as inline SVG (labels are escaped: they are tenants' names)."""
    from markupsafe import Markup, escape

    top = maximum or max((v for _, v in items), default=0.0) or 1.0
    row, width, label_w = 22, 560, 200
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="100%"'
        f' viewBox="0 0 {width} {row * len(items) + 4}" preserveAspectRatio="xMinYMin meet"'
        f' style="max-width: {width}px; font: 12px system-ui, sans-serif">'
    ]
    for i, (label, value) in enumerate(items):
        y = i * row + 2
        length = max(0.0, min(1.0, value / top)) * (width - label_w - 70)
        shown = label if len(label) <= 28 else label[:27] + "…"
        parts.append(
            f'<text x="0" y="{y + 14}" fill="#1d2430">{escape(shown)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{length:.1f}" height="14" rx="3"'
            ' fill="#1f7a4d"/>'
            f'<text x="{label_w + length + 6:.1f}" y="{y + 14}" fill="#687385">'
            f"{escape(f'{value:,.1f}{unit}')}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def local(moment: float | None, timezone: str) -> str:
    if moment is None:
        return "—"
    return datetime.fromtimestamp(moment, zone(timezone)).strftime("%Y-%m-%d %H:%M")


def html(report_type: str, context: Mapping[str, Any]) -> str:
    return _environment().get_template(f"{report_type}.html").render(top=TOP, **context)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV (RFC 4180, CRLF line ends). A cell that a spreadsheet would read as a formula
    (=, +, -, @ first) is prefixed with a quote: names and messages are anyone's text."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else _cell(v) for v in row])
    return out.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def health_files(data: Mapping[str, Any], context: Mapping[str, Any]) -> list[FileBody]:
    tz = context["timezone"]
    integrations = table(
        [
            "integration",
            "kind",
            "runs",
            "succeeded",
            "failed",
            "success_rate",
            "p50_seconds",
            "p95_seconds",
            "mttr_seconds",
            "still_failing",
            "last_success",
            "stale",
        ],
        (
            [
                r["name"],
                r["kind"],
                r["runs"],
                r["succeeded"],
                r["failed"],
                r["success_rate"],
                r["p50_seconds"],
                r["p95_seconds"],
                r["mttr_seconds"],
                r["still_failing"],
                local(r["last_success"], tz) if r["last_success"] else None,
                str(r["stale"]).lower(),
            ]
            for r in data["integrations"]
        ),
    )
    failures = table(
        ["integration", "error_group", "type", "message", "count"],
        (
            [f["name"], f["error_group"], f["type"], f["message"], f["count"]]
            for f in data["failures"]
        ),
    )
    chart = [(r["name"], r["success_rate"] * 100) for r in data["integrations"] if r["runs"]][:TOP]
    page = html("health", {**context, "data": data, "local": local, "chart": chart})
    return [
        FileBody(name="health.html", content_type=HTML, body=page),
        FileBody(name="health-integrations.csv", content_type=CSV, body=integrations),
        FileBody(name="health-failures.csv", content_type=CSV, body=failures),
        *_pdf("health.pdf", page),
    ]


def savings_files(data: Mapping[str, Any], context: Mapping[str, Any]) -> list[FileBody]:
    tz = context["timezone"]
    apps = table(
        [
            "app",
            "integration_id",
            "currency",
            "open_findings",
            "available_monthly",
            "realized_monthly",
        ],
        (
            [
                a["name"],
                a["integration_id"],
                a["currency"],
                a["findings"],
                a["available"],
                a["realized"],
            ]
            for a in data["apps"]
        ),
    )
    idle = table(
        [
            "app",
            "user",
            "verdict",
            "state",
            "confidence",
            "monthly_savings",
            "currency",
            "idle_since",
            "reason",
        ],
        (
            [
                f["name"],
                f["user"],
                f["verdict"],
                f["state"],
                f["confidence"],
                f["monthly_savings"],
                f["currency"],
                local(f["since"], tz),
                f["reason"],
            ]
            for f in data["idle"]
        ),
    )
    chart = [(a["name"], a["available"]) for a in data["apps"] if a["available"]][:TOP]
    page = html("savings", {**context, "data": data, "local": local, "chart": chart})
    return [
        FileBody(name="savings.html", content_type=HTML, body=page),
        FileBody(name="savings-apps.csv", content_type=CSV, body=apps),
        FileBody(name="savings-idle.csv", content_type=CSV, body=idle),
        *_pdf("savings.pdf", page),
    ]


FILES = {"health": health_files, "savings": savings_files}


def _pdf(name: str, page: str) -> list[FileBody]:
    rendered = pdf(page)
    return [] if rendered is None else [FileBody(name=name, content_type=PDF, body=rendered)]


def pdf(page: str) -> bytes | None:
    """The HTML as PDF, where WeasyPrint is installed (`greenroom[pdf]`: it needs the system's
    Pango and fonts); None where it is not."""
    try:
        from weasyprint import HTML as Document  # type: ignore[import-untyped]
    except (ImportError, OSError):  # not installed, or Pango missing
        return None
    rendered: bytes = Document(string=page).write_pdf()
    return rendered
