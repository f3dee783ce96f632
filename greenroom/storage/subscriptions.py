"""Tenants' subscriptions to events. Their endpoints are checked and their signing secrets
sealed by greenroom.delivery.subscriptions before they get here; every change is audited."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from greenroom.errors import InvalidInput, NotFound
from greenroom.model import Channel, Subscription
from greenroom.rules import MAX_REASON, check_labels, check_text
from greenroom.storage.backend import Tx
from greenroom.storage.base import StoreBase, audit_columns, retry_conflicts
from greenroom.storage.codec import dumps, subscription_from_row
from greenroom.storage.events import ANY_TYPE, TYPE_PATTERN

MAX_TYPES = 50
MAX_IN_FLIGHT = 1000
#: What an update may change, and what the audit shows of it (never secrets).
_UPDATABLE = (
    "url",
    "description",
    "types",
    "labels",
    "enabled",
    "digest_minutes",
    "max_in_flight",
    "rate_per_second",
)


@dataclass(frozen=True, kw_only=True)
class SubscriptionSpec:
    """What an admin decides about a subscription: every field when creating one, the fields
    to change (the others None) when updating."""

    url: str | None = None
    description: str | None = None
    types: Sequence[str] | None = None
    labels: dict[str, str] | None = None
    enabled: bool | None = None
    #: 0 turns a digest off.
    digest_minutes: int | None = None
    max_in_flight: int | None = None
    #: 0 removes the rate limit.
    rate_per_second: float | None = None

    def columns(self) -> dict[str, Any]:
        """The given fields as checked column values."""
        values: dict[str, Any] = {}
        if self.url is not None:
            values["url"] = check_text(self.url, "url", max_length=2000, min_length=1)
        if self.description is not None:
            values["description"] = check_text(
                self.description, "description", max_length=MAX_REASON
            )
        if self.types is not None:
            values["types"] = dumps(check_types(self.types))
        if self.labels is not None:
            values["labels"] = dumps(check_labels(self.labels))
        if self.enabled is not None:
            values["enabled"] = self.enabled
        if self.digest_minutes is not None:
            if not 0 <= self.digest_minutes <= 7 * 24 * 60:
                raise InvalidInput("digest_minutes must be between 0 and 10080 (a week)")
            values["digest_minutes"] = self.digest_minutes or None
        if self.max_in_flight is not None:
            if not 1 <= self.max_in_flight <= MAX_IN_FLIGHT:
                raise InvalidInput(f"max_in_flight must be between 1 and {MAX_IN_FLIGHT}")
            values["max_in_flight"] = self.max_in_flight
        if self.rate_per_second is not None:
            if not 0 <= self.rate_per_second <= 10_000:
                raise InvalidInput("rate_per_second must be between 0 and 10000")
            values["rate_per_second"] = self.rate_per_second or None
        return values


def check_types(types: Sequence[str]) -> list[str]:
    """Event types, prefixes (`run.*`) or `*`: at least one, each a type greenroom writes."""
    if not 1 <= len(types) <= MAX_TYPES:
        raise InvalidInput(f"types must name 1 to {MAX_TYPES} event types")
    for wanted in types:
        if wanted != ANY_TYPE and not TYPE_PATTERN.fullmatch(wanted):
            raise InvalidInput(f"type {wanted!r} is not an event type, a prefix like run.*, or *")
    return sorted(set(types))


class Subscriptions(StoreBase):
    """Every read and write scoped to a tenant unless a platform asks (tenant=None)."""

    @retry_conflicts
    def create(
        self,
        *,
        subscription_id: str,
        tenant: str,
        channel: Channel,
        spec: SubscriptionSpec,
        sealed: tuple[str, str] | None,
        actor: str,
    ) -> Subscription:
        """Store a subscription whose secret (webhooks) was sealed for `subscription_id`."""
        values = {
            "enabled": True,
            "description": "",
            "labels": "{}",
            "max_in_flight": 10,
            "digest_minutes": None,
            "rate_per_second": None,
            **spec.columns(),
        }
        if "url" not in values or "types" not in values:
            raise InvalidInput("a subscription needs a url and types")
        now = self.clock.now()
        row = {
            **values,
            "id": subscription_id,
            "tenant": tenant,
            "channel": channel.value,
            "key_id": sealed[0] if sealed else None,
            "secret": sealed[1] if sealed else None,
            "now": now,
        }
        names = ", ".join(k for k in row if k != "now")
        with self.backend.transaction() as tx:
            self._registered(tx, tenant)
            tx.execute(
                f"INSERT INTO subscriptions ({names}, tokens, tokens_at, created_at, updated_at)"
                f" VALUES ({', '.join(':' + k for k in row if k != 'now')}, 0, :now, :now, :now)",
                row,
            )
            self._audit(
                tx,
                tenant=tenant,
                actor=actor,
                action="subscription.create",
                target=subscription_id,
                reason="created",
                detail={"channel": channel.value, **_shown(values)},
            )
            return self._get(tx, subscription_id, tenant)

    def get(self, subscription_id: str, *, tenant: str | None = None) -> Subscription:
        with self.backend.transaction(write=False) as tx:
            return self._get(tx, subscription_id, tenant)

    def list_subscriptions(self, *, tenant: str | None = None) -> list[Subscription]:
        scope = "" if tenant is None else " WHERE tenant = :tenant"
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT * FROM subscriptions{scope} ORDER BY tenant, created_at, id",
                {"tenant": tenant},
            )
        return [subscription_from_row(r) for r in rows]

    @retry_conflicts
    def update(
        self,
        subscription_id: str,
        spec: SubscriptionSpec,
        *,
        actor: str,
        tenant: str | None = None,
    ) -> Subscription:
        """Change a subscription. Enabling one clears why it was disabled and its failure
        streak: its pending deliveries go out again."""
        values = spec.columns()
        with self.backend.transaction() as tx:
            current = self._get(tx, subscription_id, tenant, lock=True)
            if values.get("enabled") and not current.enabled:
                values.update(disabled_reason=None, failing_since=None)
            if values:
                assignments = ", ".join(f"{column} = :{column}" for column in values)
                tx.execute(
                    f"UPDATE subscriptions SET {assignments}, updated_at = :now WHERE id = :id",
                    {**values, "now": self.clock.now(), "id": subscription_id},
                )
                self._audit(
                    tx,
                    tenant=current.tenant,
                    actor=actor,
                    action="subscription.update",
                    target=subscription_id,
                    reason="updated",
                    detail=_shown(values),
                )
            return self._get(tx, subscription_id, tenant)

    @retry_conflicts
    def rotate_secret(
        self,
        subscription_id: str,
        sealed: tuple[str, str],
        *,
        overlap_seconds: float,
        actor: str,
        tenant: str | None = None,
    ) -> Subscription:
        """Sign with a new secret; the current one goes on signing too for `overlap_seconds`,
        so receivers can switch without refusing a message."""
        now = self.clock.now()
        with self.backend.transaction() as tx:
            current = self._get(tx, subscription_id, tenant, lock=True)
            if current.secret is None:
                raise InvalidInput(f"a {current.channel} subscription has no signing secret")
            tx.execute(
                "UPDATE subscriptions SET previous_key_id = key_id, previous_secret = secret,"
                " previous_until = :until, key_id = :key_id, secret = :secret, updated_at = :now"
                " WHERE id = :id",
                {
                    "until": now + overlap_seconds,
                    "key_id": sealed[0],
                    "secret": sealed[1],
                    "now": now,
                    "id": subscription_id,
                },
            )
            self._audit(
                tx,
                tenant=current.tenant,
                actor=actor,
                action="subscription.rotate_secret",
                target=subscription_id,
                reason="secret rotated",
                detail={"previous_valid_until": now + overlap_seconds},
            )
            return self._get(tx, subscription_id, tenant)

    @retry_conflicts
    def delete(self, subscription_id: str, *, actor: str, tenant: str | None = None) -> None:
        """Remove a subscription and the deliveries it still had to make."""
        with self.backend.transaction() as tx:
            current = self._get(tx, subscription_id, tenant, lock=True)
            tx.execute(
                "DELETE FROM deliveries WHERE subscription_id = :id AND state IN"
                " ('pending', 'sending')",
                {"id": subscription_id},
            )
            tx.execute("DELETE FROM subscriptions WHERE id = :id", {"id": subscription_id})
            self._audit(
                tx,
                tenant=current.tenant,
                actor=actor,
                action="subscription.delete",
                target=subscription_id,
                reason="deleted",
                detail={"channel": current.channel.value, "url": current.url},
            )

    def _get(
        self, tx: Tx, subscription_id: str, tenant: str | None, *, lock: bool = False
    ) -> Subscription:
        scope = "" if tenant is None else " AND tenant = :tenant"
        rows = tx.execute(
            f"SELECT * FROM subscriptions WHERE id = :id{scope}"
            f" {self.backend.for_update if lock else ''}",
            {"id": subscription_id, "tenant": tenant},
        )
        if not rows:
            raise NotFound(f"subscription {subscription_id} not found")
        return subscription_from_row(rows[0])


def _shown(values: dict[str, Any]) -> dict[str, Any]:
    """The audit's view of changed columns: only those it may show (never secrets)."""
    return audit_columns({k: values[k] for k in _UPDATABLE if k in values}, ("types", "labels"))
