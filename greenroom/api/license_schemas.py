"""Request and response bodies of licenses, findings, savings and license policies
(greenroom.licenses): what a sync said of each account, the last verdict, and what admins did."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from greenroom.api.schedule_schemas import Moment, checked_moment, unix_time
from greenroom.api.schemas import Body
from greenroom.errors import InvalidInput
from greenroom.licenses.ingest import MAX_BATCH
from greenroom.licenses.policy import PolicyIn
from greenroom.licenses.records import Finding, License, SavingsTotal
from greenroom.rules import MAX_REASON, Name, text

Verdict = Literal[
    "never_used", "idle", "underused", "active", "excluded", "inactive_at_source", "unknown"
]
Confidence = Literal["high", "medium", "low"]
FindingState = Literal["candidate", "notified", "actioned", "kept", "snoozed", "closed"]
#: The open finding's state, or none: licenses without an open finding.
FindingStateFilter = Literal["candidate", "notified", "actioned", "kept", "snoozed", "none"]
Sort = Literal["savings", "recent"]


class PushOut(BaseModel):
    """What a push did: rows received, licenses created, licenses whose facts changed (and
    removed ones), licenses a complete push removed, and the sync id it was saved under."""

    received: int
    created: int
    changed: int
    removed: int
    sync_id: str


class LicenseOut(BaseModel):
    id: str
    tenant: str
    integration_id: str
    user_id: str
    email: str | None
    display_name: str | None
    role: str | None
    tier: str | None
    unit_cost: float | None
    currency: str | None
    billing_period: str
    assigned_at: float | None
    renewal_at: float | None
    status: str
    idp_status: str | None
    service_account: bool
    app_last_active: float | None
    idp_last_active: float | None
    active_days: list[int] = Field(description="active days of the last 180 (UTC day numbers)")
    first_seen_at: float
    seen_at: float
    removed_at: float | None
    verdict: str | None = Field(description="the last pass's verdict; null: not judged yet")
    action: str | None
    confidence: str | None
    reason_code: str | None
    reason: str | None
    monthly_savings: float | None
    savings_currency: str | None
    realizable_at: float | None
    checked_at: float | None
    finding_id: str | None = Field(description="the open finding, if any")
    finding_state: str | None

    @classmethod
    def of(cls, found: License) -> LicenseOut:
        return cls(**vars(found))


class FindingOut(BaseModel):
    id: str
    tenant: str
    integration_id: str
    license_id: str
    user_id: str | None
    email: str | None
    verdict: str
    action: str = Field(description="reclaim or downgrade")
    confidence: str
    state: str
    episode_start: float
    until: float | None = Field(description="the end of a snooze or of a keep's cooldown")
    reason: str
    monthly_savings: float | None
    currency: str | None
    realizable_at: float | None
    action_run_id: str | None = Field(description="the reclaim's deactivate run")
    note: str | None
    opened_at: float
    updated_at: float
    closed_at: float | None
    outcome: str | None

    @classmethod
    def of(cls, found: Finding) -> FindingOut:
        return cls(**vars(found))


class FindingActionIn(Body):
    action: Literal["keep", "snooze", "reclaim"] = Field(
        description="keep the license (no event until the policy's kept_days end), snooze the"
        " finding until `until`, or reclaim it through the connector's deactivate workflow"
    )
    note: Annotated[str, text(MAX_REASON, 1)] = Field(
        examples=["on parental leave until March"], description="why; audited"
    )
    until: Moment | None = Field(None, description="snooze only: ISO 8601 or Unix time")

    @field_validator("until")
    @classmethod
    def _real_time(cls, value: Any) -> Any:
        return checked_moment(value)

    @field_validator("note")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must say why (it is audited)")
        return value

    def until_unix(self) -> float | None:
        """`until` as Unix time; given for a snooze only, and a snooze must give it."""
        if (self.until is None) == (self.action == "snooze"):
            message = "needed for a snooze" if self.until is None else "only for a snooze"
            raise InvalidInput(
                f"until: {message}", errors=[{"field": "body.until", "message": message}]
            )
        return None if self.until is None else unix_time(self.until)


class SavingsTotalOut(BaseModel):
    """Monthly savings of one integration in one currency."""

    integration_id: str
    currency: str
    available: float = Field(description="open findings not snoozed or kept")
    realized: float = Field(description="findings closed as reclaimed")
    open_findings: int
    reclaimed: int

    @classmethod
    def of(cls, total: SavingsTotal) -> SavingsTotalOut:
        return cls(**vars(total))


class CurrencyTotalOut(BaseModel):
    currency: str
    available: float
    realized: float
    open_findings: int
    reclaimed: int


class SavingsOut(BaseModel):
    """Per integration and currency, and over all integrations per currency (amounts in
    different currencies are never added up)."""

    items: list[SavingsTotalOut]
    totals: list[CurrencyTotalOut]

    @classmethod
    def of(cls, found: list[SavingsTotal]) -> SavingsOut:
        totals: dict[str, CurrencyTotalOut] = {}
        for t in found:
            sum_ = totals.setdefault(
                t.currency,
                CurrencyTotalOut(
                    currency=t.currency, available=0, realized=0, open_findings=0, reclaimed=0
                ),
            )
            sum_.available = round(sum_.available + t.available, 2)
            sum_.realized = round(sum_.realized + t.realized, 2)
            sum_.open_findings += t.open_findings
            sum_.reclaimed += t.reclaimed
        return cls(
            items=[SavingsTotalOut.of(t) for t in found],
            totals=[totals[c] for c in sorted(totals)],
        )


class PolicySet(PolicyIn, Body):
    """A change of the tenant's default or of one integration's override: fields left out
    keep their value, null clears one. Values of another JSON type are refused, as in every
    body (no true for 1)."""

    tenant: Name | None = Field(None, description="platform keys: the tenant whose policy")

    def change(self) -> PolicyIn:
        return PolicyIn.model_validate(self.model_dump(exclude={"tenant"}, exclude_unset=True))


class PolicyOut(BaseModel):
    """The settings in force (defaults filled in) for a tenant or one of its integrations."""

    grace_days: int
    threshold_days: int | None
    exempt_roles: list[str]
    exempt_users: list[str]
    underuse_share: float
    premium_idle_days: int
    kept_days: int
    min_users: int
    fallback_days: int
    sync_hours: float


#: A page cursor, as next_cursor gives it: the last row's savings and seq. Every string of this
#: pattern is a cursor (the schema states all the API checks of it).
CURSOR_PATTERN = r"^-?[0-9]{1,20}(\.[0-9]{1,20})?(e[+-]?[0-9]{1,2})?_[0-9]{1,18}$"


def encode_cursor(after: tuple[float, int]) -> str:
    """The `after` of a licenses or findings page: (savings, seq)."""
    return f"{after[0]!r}_{after[1]}"


def decode_cursor(cursor: str) -> tuple[float, int]:
    savings, _, seq = cursor.rpartition("_")
    return float(savings), int(seq)


def account_data(raw: bytes, *, ndjson: bool) -> Any:
    """A pushed body as JSON values: an array, or NDJSON's lines (blank ones skipped), each
    line's error naming the row it would have been. parse_accounts validates the rows."""
    if not ndjson:
        try:
            return json.loads(raw)
        except ValueError:
            raise _invalid("accounts", "not JSON (an array of account rows)") from None
    data: list[Any] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data.append(json.loads(line))
        except ValueError:
            raise _invalid(f"accounts[{len(data)}]", f"line {number} is not JSON") from None
        if len(data) > MAX_BATCH:
            break  # parse_accounts refuses the batch: the rest need not be read
    return data


def _invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(f"{field}: {message}", errors=[{"field": field, "message": message}])
