"""Request and response bodies of subscriptions and deliveries (docs/events.md, "Delivery")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from greenroom.api.schemas import Body
from greenroom.delivery.render import shown_endpoint
from greenroom.model import Delivery, DeliveryAttempt, Subscription
from greenroom.rules import MAX_REASON, Labels, Name, text
from greenroom.storage.events import TYPE_PATTERN
from greenroom.storage.subscriptions import MAX_IN_FLIGHT, MAX_TYPES, SubscriptionSpec

TypeFilter = Annotated[
    str,
    StringConstraints(max_length=60, pattern=rf"^(\*|{TYPE_PATTERN.pattern})$"),
]
Types = Annotated[list[TypeFilter], Field(min_length=1, max_length=MAX_TYPES)]
#: An https URL (http only where a setting allows it), or for e-mail an address; whether the
#: URL's host may be reached (no private addresses) is checked beyond what this says.
_ADDRESS_PART = r"[^@\s<>,;:\x22\x00-\x1f]+"
URL_PATTERN = rf"^(https?://[A-Za-z0-9.\[\]:-]+(/[!-~]*)?|{_ADDRESS_PART}@{_ADDRESS_PART})$"
Url = Annotated[str, StringConstraints(min_length=1, max_length=2000, pattern=URL_PATTERN)]
Description = Annotated[str, text(MAX_REASON)]
DigestMinutes = Annotated[int, Field(ge=0, le=7 * 24 * 60)]
InFlight = Annotated[int, Field(ge=1, le=MAX_IN_FLIGHT)]
Rate = Annotated[float, Field(ge=0, le=10_000)]


class SubscriptionUpdate(Body):
    url: Url | None = Field(None, description="an https URL, or for e-mail an address")
    description: Description | None = None
    types: Types | None = Field(None, examples=[["run.failed", "integration.*"]])
    labels: Labels | None = Field(
        None, description="label values the event's run must have", examples=[{"integration": "…"}]
    )
    enabled: bool | None = Field(None, description="enabling one clears why it was disabled")
    digest_minutes: DigestMinutes | None = Field(
        None, description="e-mail: one mail per this many minutes (0: one per event)"
    )
    max_in_flight: InFlight | None = Field(None, description="deliveries sent to it at once")
    rate_per_second: Rate | None = Field(None, description="deliveries per second (0: no limit)")

    def spec(self) -> SubscriptionSpec:
        return SubscriptionSpec(**self.model_dump(exclude_unset=True))


class SubscriptionCreate(SubscriptionUpdate):
    channel: Literal["webhook", "slack", "email"] = "webhook"
    url: Url = Field(description="an https URL, or for e-mail an address")
    types: Types = Field(examples=[["run.failed", "integration.*"]])
    tenant: Name | None = Field(None, description="platform keys only")

    def spec(self) -> SubscriptionSpec:
        return SubscriptionSpec(
            **self.model_dump(exclude_unset=True, exclude={"channel", "tenant"})
        )


class SubscriptionOut(BaseModel):
    id: str
    tenant: str
    channel: str
    url: str = Field(description="a Slack webhook's path is its secret: shown as …")
    description: str
    types: list[str]
    labels: dict[str, str]
    enabled: bool
    disabled_reason: str | None
    digest_minutes: int | None
    max_in_flight: int
    rate_per_second: float | None
    failing_since: float | None = Field(description="since when every attempt failed")
    last_success_at: float | None
    previous_secret_until: float | None = Field(
        description="during a rotation: until when the previous secret signs too"
    )
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, s: Subscription) -> SubscriptionOut:
        return cls(
            id=s.id,
            tenant=s.tenant,
            channel=s.channel.value,
            url=shown_endpoint(s),
            description=s.description,
            types=s.types,
            labels=s.labels,
            enabled=s.enabled,
            disabled_reason=s.disabled_reason,
            digest_minutes=s.digest_minutes,
            max_in_flight=s.max_in_flight,
            rate_per_second=s.rate_per_second,
            failing_since=s.failing_since,
            last_success_at=s.last_success_at,
            previous_secret_until=s.previous_until if s.secret is not None else None,
            created_at=s.created_at,
            updated_at=s.updated_at,
        )


class SubscriptionWithSecret(SubscriptionOut):
    secret: str | None = Field(
        description="webhooks: the signing secret (whsec_…), shown this once; null otherwise"
    )


class DeliveryOut(BaseModel):
    id: int
    tenant: str
    subscription_id: str
    event_id: int
    state: str = Field(examples=["delivered"], description="pending, sending, delivered, failed")
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    created_at: float
    updated_at: float
    delivered_at: float | None

    @classmethod
    def of(cls, d: Delivery) -> DeliveryOut:
        return cls.model_validate(d, from_attributes=True)


class DeliveryAttemptOut(BaseModel):
    id: int
    attempt: int
    at: float
    outcome: str = Field(description="delivered, retry, failed, or disabled (410 Gone)")
    status: int | None
    latency_ms: float
    response: str = Field(description="the start of the answer's body")
    error: str | None
    worker_id: str

    @classmethod
    def of(cls, a: DeliveryAttempt) -> DeliveryAttemptOut:
        return cls.model_validate(a, from_attributes=True)


class ReplayIn(Body):
    subscription: Annotated[str, text(40, 1)] | None = Field(
        None, description="only to this subscription; default: every one that wants the event"
    )


class RecoverIn(Body):
    since: Annotated[float, Field(ge=0, le=4_102_444_800)] = Field(
        description="Unix time: events that occurred since then"
    )
    subscription: Annotated[str, text(40, 1)] | None = None
    tenant: Name | None = Field(None, description="platform keys only")


class RecoverOut(BaseModel):
    deliveries: int = Field(description="deliveries made or restarted")
