"""Report periods: a day, an ISO week or a calendar month as the tenant's clock shows it.

Boundaries are local midnights turned into instants with zoneinfo, so a week across a
daylight-saving change is 167 or 169 hours long, not 168, and a report never counts the hour
before or after its period."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from greenroom.schedules.spec import zone


class PeriodKind(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


#: When a subscription's schedule fires by default: 07:00 local after each period ends.
DEFAULT_CRON = {
    PeriodKind.DAY: "0 7 * * *",
    PeriodKind.WEEK: "0 7 * * 1",
    PeriodKind.MONTH: "0 7 1 * *",
}


@dataclass(frozen=True, kw_only=True)
class Period:
    kind: PeriodKind
    timezone: str
    #: The first local day of the period, and the first day after it.
    first: date
    after: date

    @property
    def start(self) -> float:
        return _midnight(self.first, self.timezone)

    @property
    def end(self) -> float:
        return _midnight(self.after, self.timezone)

    @property
    def title(self) -> str:
        """How people name it: `2026-12-06`, `the week of 2026-11-30`, `November 2026`."""
        if self.kind is PeriodKind.DAY:
            return self.first.isoformat()
        if self.kind is PeriodKind.WEEK:
            return f"the week of {self.first.isoformat()}"
        return self.first.strftime("%B %Y")


def _midnight(day: date, timezone: str) -> float:
    # A local midnight that does not exist (a zone that springs forward at 00:00) resolves to
    # the instant after the gap: zoneinfo's fold=0 reading of the wall time.
    return datetime(day.year, day.month, day.day, tzinfo=zone(timezone)).timestamp()


def period_containing(kind: PeriodKind, day: date, timezone: str) -> Period:
    if kind is PeriodKind.DAY:
        first, after = day, day + timedelta(days=1)
    elif kind is PeriodKind.WEEK:
        first = day - timedelta(days=day.weekday())
        after = first + timedelta(days=7)
    else:
        first = day.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    return Period(kind=kind, timezone=timezone, first=first, after=after)


def last_complete(kind: PeriodKind, moment: float, timezone: str) -> Period:
    """The latest period that has ended by `moment` (a schedule's slot), in `timezone`."""
    today = datetime.fromtimestamp(moment, zone(timezone)).date()
    current = period_containing(kind, today, timezone)
    return period_containing(kind, current.first - timedelta(days=1), timezone)
