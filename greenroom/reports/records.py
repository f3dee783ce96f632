"""Reports and report subscriptions: frozen records, as the store returns them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ReportType(StrEnum):
    HEALTH = "health"
    SAVINGS = "savings"


#: Labels of a report.ready event (its payload's `labels`): a report subscription's event
#: subscriptions match them, so each hears only of its report type and period.
REPORT_LABEL = "report"
PERIOD_LABEL = "report_period"


@dataclass(frozen=True, kw_only=True)
class ReportFile:
    name: str
    content_type: str
    size: int


@dataclass(frozen=True, kw_only=True)
class Report:
    id: str
    tenant: str
    report_type: str
    period: str
    period_start: float
    period_end: float
    timezone: str
    #: The headline numbers (totals), for lists and messages.
    summary: dict[str, Any]
    #: The run that made (or last made again) it.
    run_id: str | None
    created_at: float
    updated_at: float
    #: report.ready events written for it: 1, plus one per audited resend.
    published: int
    files: tuple[ReportFile, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ReportSubscription:
    id: str
    tenant: str
    report_type: str
    period: str
    timezone: str
    #: The schedule that fires its runs (docs/schedules.md).
    schedule_id: str
    #: The event subscriptions its channels deliver through (docs/events.md).
    subscription_ids: tuple[str, ...]
    enabled: bool
    created_by: str
    created_at: float
    updated_at: float
