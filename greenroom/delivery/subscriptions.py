"""Subscriptions as admins make them: endpoints checked against the address policy, signing
secrets made here, shown once and sealed like integration credentials."""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING

from greenroom.delivery.address import AddressPolicy, BlockedEndpoint, check_url
from greenroom.delivery.signing import new_secret
from greenroom.errors import ConfigError, InvalidInput
from greenroom.model import Channel, Subscription
from greenroom.rules import problem
from greenroom.storage.subscriptions import SubscriptionSpec

if TYPE_CHECKING:
    from greenroom.crypto import KeyRing
    from greenroom.storage.store import RunStore

#: How long a rotated-out secret goes on signing beside the new one.
ROTATION_OVERLAP_SECONDS = 24 * 3600.0
_ADDRESS = re.compile(r"[^@\s<>,;:\"]+@[^@\s<>,;:\"]+\.[^@\s<>,;:\"]+")


def check_endpoint(channel: Channel, url: str, policy: AddressPolicy) -> None:
    """An https URL that may be reached (webhook, Slack) or an e-mail address; a 422 naming
    `url` otherwise."""
    message: str | None
    if channel is Channel.EMAIL:
        message = problem(url)
        if message is None and (len(url) > 254 or not _ADDRESS.fullmatch(url)):
            message = "must be an e-mail address (name@example.com)"
    else:
        try:
            check_url(url, policy)
            message = None
        except BlockedEndpoint as exc:
            message = str(exc)
    if message is not None:
        raise InvalidInput(f"url {message}", errors=[{"field": "body.url", "message": message}])


def _context(tenant: str, subscription_id: str) -> str:
    return f"subscription\0{tenant}\0{subscription_id}"


def create(
    store: RunStore,
    ring: KeyRing | None,
    policy: AddressPolicy,
    *,
    tenant: str,
    channel: Channel,
    spec: SubscriptionSpec,
    actor: str,
) -> tuple[Subscription, str | None]:
    """The new subscription, and its signing secret (webhooks only; never shown again)."""
    check_endpoint(channel, spec.url or "", policy)
    subscription_id = str(uuid.uuid4())
    secret = None
    sealed = None
    if channel is Channel.WEBHOOK:
        secret = new_secret()
        sealed = _ring(ring).encrypt(secret.encode(), _context(tenant, subscription_id))
    created = store.subscriptions.create(
        subscription_id=subscription_id,
        tenant=tenant,
        channel=channel,
        spec=spec,
        sealed=sealed,
        actor=actor,
    )
    return created, secret


def update(
    store: RunStore,
    policy: AddressPolicy,
    subscription_id: str,
    spec: SubscriptionSpec,
    *,
    actor: str,
    tenant: str | None,
) -> Subscription:
    if spec.url is not None:
        current = store.subscriptions.get(subscription_id, tenant=tenant)
        check_endpoint(current.channel, spec.url, policy)
    return store.subscriptions.update(subscription_id, spec, actor=actor, tenant=tenant)


def rotate_secret(
    store: RunStore,
    ring: KeyRing | None,
    subscription_id: str,
    *,
    actor: str,
    tenant: str | None,
    overlap_seconds: float = ROTATION_OVERLAP_SECONDS,
) -> tuple[Subscription, str]:
    """A new signing secret (shown once); the old one signs too for `overlap_seconds`."""
    current = store.subscriptions.get(subscription_id, tenant=tenant)
    secret = new_secret()
    sealed = _ring(ring).encrypt(secret.encode(), _context(current.tenant, current.id))
    rotated = store.subscriptions.rotate_secret(
        subscription_id, sealed, overlap_seconds=overlap_seconds, actor=actor, tenant=tenant
    )
    return rotated, secret


def signing_secrets(ring: KeyRing, subscription: Subscription, now: float) -> list[str]:
    """The secrets that sign a message now: the current one, and during a rotation the one
    before it."""
    sealed = [(subscription.key_id, subscription.secret)]
    if subscription.previous_until is not None and subscription.previous_until > now:
        sealed.append((subscription.previous_key_id, subscription.previous_secret))
    found = []
    for key_id, blob in sealed:
        if key_id is None or blob is None:
            continue
        plain = ring.decrypt(key_id, blob, _context(subscription.tenant, subscription.id))
        if plain is None:
            raise ConfigError(
                f"subscription {subscription.id}: its secret was sealed with key {key_id}, which"
                " this node does not have (GREENROOM_SECRET_KEY / GREENROOM_PREVIOUS_SECRET_KEYS)"
            )
        found.append(plain.decode())
    return found


def _ring(ring: KeyRing | None) -> KeyRing:
    if ring is None:
        raise ConfigError("set GREENROOM_SECRET_KEY to keep webhook signing secrets")
    return ring
