"""A tenant's license policy as stored and as set: its default, and per-integration overrides of
single settings (an override names only what it changes)."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from greenroom.licenses.detect import Policy
from greenroom.rules import MAX_NAME, text

#: How often an integration is expected to sync when no schedule of it says: data older than
#: twice this is stale.
DEFAULT_SYNC_HOURS = 24.0

Exempt = Annotated[str, text(MAX_NAME, 1)]


class PolicyIn(BaseModel):
    """What a tenant admin may set (every field optional: unset ones keep their value)."""

    model_config = ConfigDict(extra="forbid")

    grace_days: int | None = Field(None, ge=0, le=365)
    threshold_days: int | None = Field(None, ge=1, le=365)
    exempt_roles: list[Exempt] | None = Field(None, max_length=200)
    exempt_users: list[Exempt] | None = Field(None, max_length=1000)
    underuse_share: float | None = Field(None, ge=0, le=1)
    premium_idle_days: int | None = Field(None, ge=1, le=365)
    kept_days: int | None = Field(None, ge=1, le=3650)
    min_users: int | None = Field(None, ge=1, le=100_000)
    fallback_days: int | None = Field(None, ge=1, le=365)
    sync_hours: float | None = Field(None, gt=0, le=24 * 90)


def merged(*layers: dict[str, Any]) -> tuple[Policy, float]:
    """The policy and the expected sync interval (hours) from stored layers, later ones
    winning: the tenant's default, then the integration's override."""
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({k: v for k, v in layer.items() if v is not None})
    sync_hours = float(values.pop("sync_hours", DEFAULT_SYNC_HOURS))
    known = {f.name for f in fields(Policy)}
    policy = Policy(**{k: v for k, v in values.items() if k in known})
    return replace(
        policy,
        exempt_roles=frozenset(policy.exempt_roles),
        exempt_users=frozenset(policy.exempt_users),
    ), sync_hours


def loads(text_: str | None) -> dict[str, Any]:
    """A stored layer (unreadable: no settings, rather than a pass that fails for a tenant)."""
    try:
        value = json.loads(text_ or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def updated(stored: dict[str, Any], change: PolicyIn) -> dict[str, Any]:
    """A stored layer with the fields a request set (an explicit null clears one)."""
    result = dict(stored)
    for name in change.model_fields_set:
        value = getattr(change, name)
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result
