"""Licenses and findings as the store returns them (to the API, the CLI and the pass)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class License:
    """One account of an integration's app, what its syncs said of it, and the last verdict."""

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
    #: Active days in the last 180 (UTC day numbers, ascending).
    active_days: list[int]
    first_seen_at: float
    seen_at: float
    removed_at: float | None
    #: The last pass's verdict (None: not classified yet).
    verdict: str | None
    action: str | None
    confidence: str | None
    reason_code: str | None
    reason: str | None
    monthly_savings: float | None
    savings_currency: str | None
    realizable_at: float | None
    checked_at: float | None
    #: The open finding's id and state, if any.
    finding_id: str | None = None
    finding_state: str | None = None


@dataclass(frozen=True, kw_only=True)
class Finding:
    """A verdict worth acting on, for one license and one idle (or underused) episode."""

    id: str
    tenant: str
    integration_id: str
    license_id: str
    user_id: str | None
    email: str | None
    verdict: str
    action: str
    confidence: str
    state: str
    episode_start: float
    #: The end of a snooze or of a keep's cooldown.
    until: float | None
    reason: str
    monthly_savings: float | None
    currency: str | None
    realizable_at: float | None
    action_run_id: str | None
    note: str | None
    opened_at: float
    updated_at: float
    closed_at: float | None
    #: How it closed: active again, reclaimed, removed, superseded.
    outcome: str | None


@dataclass(frozen=True, kw_only=True)
class SavingsTotal:
    """Monthly savings of one integration in one currency."""

    integration_id: str
    currency: str
    #: Open findings' savings (reclaims and downgrades not done yet; snoozed and kept excluded).
    available: float
    #: Findings closed because the license was reclaimed.
    realized: float
    open_findings: int
    reclaimed: int
