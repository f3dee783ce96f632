"""Request and response bodies of report subscriptions and reports (docs/reports.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from greenroom.api.delivery_schemas import Url
from greenroom.api.schedule_schemas import Cron, TimeZone
from greenroom.api.schemas import Body
from greenroom.errors import InvalidInput
from greenroom.reports.records import Report, ReportSubscription
from greenroom.rules import Name, Reason

ReportType = Literal["health", "savings"]
PeriodKind = Literal["day", "week", "month"]
#: A page of reports ends at (period start, id).
CURSOR_PATTERN = r"^-?[0-9]{1,20}(\.[0-9]{1,20})?(e[+-]?[0-9]{1,2})?_[0-9a-f-]{36}$"
FileName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[a-z0-9.-]+$")]


def parse_at(text: str) -> float:
    """An ISO 8601 time (UTC without an offset) as Unix time."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput("at: not an ISO 8601 time") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def encode_cursor(after: tuple[float, str]) -> str:
    return f"{after[0]!r}_{after[1]}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    start, _, report_id = cursor.partition("_")
    return float(start), report_id


class Destination(Body):
    channel: Literal["email", "webhook"]
    url: Url = Field(description="an e-mail address, or an https URL")


class ReportSubscriptionCreate(Body):
    report_type: ReportType
    period: PeriodKind = "week"
    timezone: TimeZone = Field("UTC", examples=["Europe/Berlin"], description="the tenant's")
    cron: Cron | None = Field(
        None,
        examples=["0 7 * * 1"],
        description="when it is made, in its time zone (default: 07:00 after each period)",
    )
    channels: list[Destination] = Field(min_length=1, max_length=10)
    tenant: Name | None = Field(None, description="platform keys only")


class ReportSubscriptionUpdate(Body):
    enabled: bool


class ReportSubscriptionOut(BaseModel):
    id: str
    tenant: str
    report_type: str
    period: str
    timezone: str
    schedule_id: str = Field(description="the schedule that makes its reports")
    subscription_ids: list[str] = Field(description="the event subscriptions it delivers by")
    enabled: bool
    created_by: str
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, s: ReportSubscription) -> ReportSubscriptionOut:
        return cls(**{**s.__dict__, "subscription_ids": list(s.subscription_ids)})


class ReportSubscriptionCreated(ReportSubscriptionOut):
    secrets: dict[str, str] = Field(
        description="webhooks' signing secrets by event subscription id: shown only here"
    )


class ReportFileOut(BaseModel):
    name: str
    content_type: str
    size: int


class ReportOut(BaseModel):
    id: str
    tenant: str
    report_type: str
    period: str
    period_start: float
    period_end: float
    timezone: str
    summary: dict[str, object]
    run_id: str | None
    created_at: float
    updated_at: float
    published: int = Field(description="report.ready events written: 1, plus one per resend")
    files: list[ReportFileOut]

    @classmethod
    def of(cls, r: Report) -> ReportOut:
        files = [ReportFileOut(**f.__dict__) for f in r.files]
        return cls(**{**r.__dict__, "files": files})


class ResendIn(Body):
    reason: Reason


class ReportRunIn(Body):
    report_type: ReportType
    period: PeriodKind = "week"
    timezone: TimeZone = "UTC"
    at: Annotated[str, StringConstraints(max_length=40, pattern=r"^[0-9T:.+-]+Z?$")] | None = Field(
        None, description="an ISO time in or after the period (default: now: the last period)"
    )
    again: bool = Field(
        False, description="make the period again (after a data fix); nobody is told again"
    )
    force_resend: bool = Field(
        False, description="admins: tell its subscribers again all the same (audited)"
    )
    reason: Reason | None = Field(None, description="why it is resent (force_resend)")
    tenant: Name | None = Field(None, description="platform keys only")


class ReportRunOut(BaseModel):
    run_id: str
