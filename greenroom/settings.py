"""One typed settings object, read from GREENROOM_* environment variables."""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from greenroom.delivery.schedule import RETRY_DELAYS
from greenroom.errors import ConfigError

DEFAULT_DB = "sqlite:///.greenroom/greenroom.db"
ENV_PREFIX = "GREENROOM_"


class Settings(BaseModel):
    """Values given as arguments win over GREENROOM_<NAME> environment variables (any case),
    which win over the defaults. A plain model reading the environment itself: pydantic-settings
    took about a tenth of a worker's start-up to import."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    db: str = Field(DEFAULT_DB, description="sqlite:///path or postgresql://…")
    lease_seconds: float = Field(10.0, gt=0, description="how long a lease lasts unrenewed")
    heartbeat_seconds: float = Field(2.0, gt=0, description="how often a worker renews its leases")
    poll_seconds: float = Field(
        0.25, gt=0, description="maintenance tick: recovery, delays, polling"
    )
    max_stalls: int = Field(3, ge=1, description="lease losses before a run fails")
    shutdown_grace_seconds: float = Field(10.0, ge=0)
    concurrency: int = Field(10, ge=1)
    memory_budget_mb: int | None = Field(
        None, ge=1, description="a worker claims new runs only while it and its browsers fit"
    )
    memory_per_run_mb: int = Field(
        150, ge=1, description="memory a run is assumed to need until runs have been measured"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="lines below this level are not written (greenroom's and others')"
    )
    log_format: Literal["console", "json"] = Field(
        "console", description="console: a line for people; json: one object a line, to ship"
    )

    # -- browser runtime (greenroom.browser) --------------------------------------------
    browser_executable: str | None = Field(
        None, description="Chromium to launch; default /usr/bin/chromium, then Playwright's own"
    )
    browser_headless: bool = True
    browser_processes: int = Field(1, ge=1, description="Chromium processes per worker")
    browser_recycle_after: int = Field(
        100, ge=1, description="contexts a browser serves before it is replaced"
    )
    browser_memory_limit_mb: int | None = Field(
        None, ge=1, description="replace a browser whose processes use more (Linux)"
    )
    browser_idle_contexts: int = Field(
        20, ge=0, description="idle session contexts a worker keeps warm"
    )
    browser_action_timeout: float = Field(
        30.0, gt=0, description="default Playwright timeout for actions and navigation"
    )
    browser_trace: Literal["off", "on", "retry"] = Field(
        "off", description="Playwright tracing: never, every run, or attempts after the first"
    )
    secret_key: SecretStr | None = Field(
        None, description="base64 of 32 bytes: encrypts saved browser sessions (AES-GCM)"
    )
    previous_secret_keys: str = Field(
        "", description="comma-separated older keys, still accepted for reading (rotation)"
    )
    artifacts_dir: str | None = Field(
        None, description="failure artifacts; default: beside the SQLite file or .greenroom/"
    )
    artifact_max_bytes: int = Field(5_000_000, ge=1000, description="cap per artifact")
    diagnostics_timeout: float = Field(
        5.0, gt=0, description="time allowed for each capture from a failing page"
    )

    # -- HTTP API (greenroom.api) ------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="address `greenroom api` and `up` listen on")
    api_port: int = Field(8700, ge=0, le=65535)
    api_max_body_bytes: int = Field(
        1_000_000, ge=1024, description="larger request bodies are refused with 413"
    )
    api_rate_limit: float = Field(
        100.0, gt=0, description="requests per second per API key (a key may set its own)"
    )
    api_rate_burst: int = Field(200, ge=1, description="requests a key may make at once")
    api_key_cache_seconds: float = Field(
        5.0, ge=0, description="how long a node trusts a verified key (revocation elsewhere)"
    )
    api_auth_failure_rate: float = Field(
        1.0, gt=0, description="failed authentications per second per key id and per address"
    )
    api_auth_failure_burst: int = Field(
        20, ge=1, description="failed authentications a key id or an address may make at once"
    )

    # -- event delivery (greenroom.delivery) --------------------------------------------
    delivery_enabled: bool = Field(
        True, description="workers deliver events to subscriptions (webhook, Slack, e-mail)"
    )
    delivery_concurrency: int = Field(
        32, ge=1, description="deliveries a worker makes at once, over every subscription"
    )
    delivery_timeout_seconds: float = Field(
        10.0, gt=0, description="an attempt that has no whole answer by then failed"
    )
    delivery_retry_delays: tuple[float, ...] = Field(
        RETRY_DELAYS,
        min_length=1,
        description="seconds before each attempt of a delivery (comma-separated; the first is"
        " the first attempt's, the last attempt gives up): Standard Webhooks' schedule, with"
        " ±10 % jitter; shorter schedules are for tests",
    )
    delivery_allow_http: bool = Field(
        False, description="allow http:// endpoints (development); https:// otherwise"
    )
    delivery_allow_private: bool = Field(
        False,
        description="allow endpoints on loopback, private, link-local or metadata addresses",
    )
    delivery_max_payload_bytes: int = Field(
        256 * 1024, ge=1024, description="a larger event is sent without its payload, as a link"
    )
    delivery_log_days: float = Field(
        30.0, gt=0, description="delivery attempts are kept this long, then pruned"
    )
    delivery_disable_after_days: float = Field(
        5.0, gt=0, description="an endpoint failing this long without a success is disabled"
    )
    event_retention_days: float | None = Field(
        90.0, gt=0, description="events older than this are pruned by workers (none: keep)"
    )
    public_url: str | None = Field(
        None, description="the API's address as receivers reach it, for links in deliveries"
    )
    smtp_host: str | None = Field(None, description="SMTP server for e-mail subscriptions")
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_security: Literal["auto", "starttls", "tls", "none"] = Field(
        "auto", description="auto: STARTTLS when the server offers it"
    )
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = Field("greenroom@localhost", description="sender of notification mail")

    # -- schedules (greenroom.schedules) --------------------------------------------------
    schedules_enabled: bool = Field(True, description="workers fire due schedules")
    schedule_min_interval_seconds: float = Field(
        60.0, gt=0, description="the shortest interval (and cron step) a schedule may have"
    )
    schedule_firings_days: float = Field(
        30.0, gt=0, description="a schedule's firings, skips and misses are kept this long"
    )

    # -- license intelligence (greenroom.licenses) ----------------------------------------
    licenses_enabled: bool = Field(True, description="workers judge licenses that are due")
    license_pass_seconds: float = Field(
        30.0, gt=0, description="how often a worker looks for licenses that are due"
    )
    license_upkeep_seconds: float = Field(
        300.0,
        gt=0,
        description="how often stale data, old baselines and daily digests are looked for",
    )

    # -- metrics (greenroom.metrics; docs/observability.md) -------------------------------
    metrics_port: int = Field(
        0, ge=0, le=65535, description="a worker serves /metrics on this port (0: off)"
    )
    metrics_host: str = Field("127.0.0.1", description="address a worker's /metrics listens on")
    metrics_api: bool = Field(
        True, description="API nodes serve GET /metrics, without authentication (off: 404)"
    )
    metrics_tenant_label: bool = Field(
        False, description="label run metrics with their tenant (one series per tenant)"
    )
    metrics_scrape_timeout: float = Field(
        2.0, gt=0, description="an API node's database reads for /metrics give up after this"
    )

    @model_validator(mode="before")
    @classmethod
    def _environment(cls, given: Any) -> Any:
        if not isinstance(given, dict):
            return given
        names = {f"{ENV_PREFIX}{name}".lower(): name for name in cls.model_fields}
        found = {names[k.lower()]: v for k, v in os.environ.items() if k.lower() in names}
        return {**found, **given}

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("delivery_retry_delays", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("delivery_retry_delays")
    @classmethod
    def _no_negative_delay(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(delay < 0 for delay in value):
            raise ValueError("delays must not be negative")
        return value

    @model_validator(mode="after")
    def _heartbeat_fits_lease(self) -> Settings:
        if self.heartbeat_seconds >= self.lease_seconds / 2:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds}) must be less than half of "
                f"lease_seconds ({self.lease_seconds}) so a lease survives one missed beat"
            )
        return self


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment and overrides; errors become one clear ConfigError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None


def redact(url: str) -> str:
    """A database URL without its password, for logs and messages."""
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", url)
