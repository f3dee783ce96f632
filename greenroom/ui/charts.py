"""The overview's sparklines: inline SVG drawn on the server from the API's throughput answer,
so the page needs no script and no chart library."""

from __future__ import annotations

from dataclasses import dataclass

from greenroom.api.schemas import ThroughputOut

#: The drawing's size in SVG units (it stretches to the page's width).
WIDTH, HEIGHT = 300.0, 40.0
OUTCOMES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True, kw_only=True)
class Bar:
    outcome: str
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True, kw_only=True)
class Sparks:
    """What overview.html draws: ends by outcome as stacked bars, throughput and failure rate
    as lines, and the numbers their titles say."""

    bars: list[Bar]
    throughput: str  # polyline points
    failure_rate: str
    per_minute: float  # the last stretch's ends per minute
    failed_share: float  # of the whole span's ends, 0 to 1
    ended: int
    hours: float
    minutes: float  # a stretch's
    peak: int


def _line(values: list[float], top: float) -> str:
    step = WIDTH / max(len(values) - 1, 1)
    return " ".join(
        f"{i * step:.1f},{HEIGHT - (v / top) * HEIGHT if top else HEIGHT:.1f}"
        for i, v in enumerate(values)
    )


def sparks(found: ThroughputOut) -> Sparks:
    stretches = found.stretches
    totals = [s.succeeded + s.failed + s.cancelled for s in stretches]
    peak = max(totals, default=0)
    slot = WIDTH / max(len(stretches), 1)
    bars: list[Bar] = []
    for i, s in enumerate(stretches):
        bottom = HEIGHT
        for outcome in OUTCOMES:
            n = getattr(s, outcome)
            if n and peak:
                height = n / peak * HEIGHT
                bottom -= height
                bars.append(
                    Bar(outcome=outcome, x=i * slot, y=bottom, width=slot * 0.8, height=height)
                )
    minutes = found.width / 60
    rates = [s.failed / t if t else 0.0 for s, t in zip(stretches, totals, strict=True)]
    ended = sum(totals)
    return Sparks(
        bars=bars,
        throughput=_line([float(t) for t in totals], float(peak)),
        failure_rate=_line(rates, 1.0),
        per_minute=totals[-1] / minutes if totals else 0.0,
        failed_share=sum(s.failed for s in stretches) / ended if ended else 0.0,
        ended=ended,
        hours=found.width * len(stretches) / 3600,
        minutes=minutes,
        peak=peak,
    )
