"""The database schema, defined once; Alembic migrations must produce exactly this."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from greenroom.storage.lifecycle.states import LIVE_WHERE

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY, PostgreSQL wants BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _partial_index(name: str, *columns: Any, where: str, unique: bool = False) -> Index:
    """An index of the rows matching `where`, the same on both databases."""
    return Index(
        name,
        *columns,
        unique=unique,
        sqlite_where=text(where),
        postgresql_where=text(where),
    )


runs = Table(
    "runs",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True),
    Column("tenant", String(200), nullable=False),
    Column("workflow", String(200), nullable=False),
    Column("queue", String(200), nullable=False),
    Column("session_key", String(500)),
    Column("state", String(16), nullable=False),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("input", Text, nullable=False),
    Column("labels", Text, nullable=False),
    Column("output", Text),
    Column("error", Text),
    Column("idempotency_key", String(200)),
    Column("attempt", Integer, nullable=False, server_default="1"),
    Column("max_attempts", Integer, nullable=False, server_default="1"),
    Column("timeout", Float),
    Column("stalls", Integer, nullable=False, server_default="0"),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    Column("lease_owner", String(80)),
    Column("lease_token", BigInteger, nullable=False, server_default="0"),
    Column("lease_expires_at", Float),
    Column("available_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("updated_at", Float, nullable=False),
    # Added by migration 0002 (SQLite appends columns, so they stay last).
    Column("pause_requested", Boolean, nullable=False, server_default=text("false")),
    Column("retry_of", String(40)),
    Column("error_group", String(32)),
    Column("lease_seconds", Float),
    # Added by migration 0004: what an idempotent API create asked for, to refuse a different body.
    Column("request_hash", String(64)),
    # Added by migration 0005: the run holds a slot of its queue's / tenant's concurrency limit.
    Column("holds_queue_slot", Boolean, nullable=False, server_default=text("false")),
    Column("holds_tenant_slot", Boolean, nullable=False, server_default=text("false")),
    # Added by migration 0008: the newest retry of this failed or cancelled run.
    Column("superseded_by", String(40)),
    # Added by migration 0013: the W3C traceparent it was created under.
    Column("trace_parent", String(55)),
    _partial_index(
        "runs_idempotency",
        "tenant",
        "idempotency_key",
        unique=True,
        where="idempotency_key IS NOT NULL",
    ),
    # Ready runs without a session: claimed straight from this index, tenant by tenant.
    _partial_index(
        "runs_ready_free",
        "tenant",
        "queue",
        text("priority DESC"),
        "seq",
        where="state = 'queued' AND session_key IS NULL",
    ),
    # Ready runs of one session: the lane head lookup.
    _partial_index(
        "runs_ready_session",
        "tenant",
        "session_key",
        text("priority DESC"),
        "seq",
        where="state = 'queued'",
    ),
    _partial_index(
        "runs_delayed",
        "available_at",
        where="state = 'delayed'",
    ),
    _partial_index(
        "runs_leased",
        "lease_owner",
        "lease_expires_at",
        where="state = 'running'",
    ),
    Index("runs_listing", "tenant", "state", "seq"),
    Index("runs_workflow", "workflow", "seq"),
    # Partial (migration 0005): a run's claim and end add no entries for what it lacks.
    _partial_index(
        "runs_retry_of",
        "retry_of",
        where="retry_of IS NOT NULL",
    ),
    # A group's runs per tenant (migration 0014), with what the errors pages count of them
    # (open and resolved failures: migration 0018), read from the index alone.
    _partial_index(
        "runs_error_group",
        "error_group",
        "tenant",
        "state",
        "superseded_by",
        where="error_group IS NOT NULL",
    ),
    # Ends by time with what the overview counts of them (migration 0016): the last day's ends
    # and the sparklines read this index alone, never the table.
    _partial_index(
        "runs_finished",
        "finished_at",
        "tenant",
        "queue",
        "state",
        "superseded_by",
        where="finished_at IS NOT NULL",
    ),
    # Runs not ended yet (migration 0016): the overview counts them without reading ended ones.
    _partial_index(
        "runs_live",
        "tenant",
        "queue",
        "state",
        where=LIVE_WHERE,
    ),
    # A tenant's runs newest first (API listings).
    Index("runs_tenant", "tenant", "seq"),
)

steps = Table(
    "steps",
    metadata,
    Column("run_id", String(40), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("result", Text),
    Column("error", Text),
    Column("attempts", Integer, nullable=False),
    Column("lease_token", BigInteger, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=False),
)

run_events = Table(
    "run_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", String(40), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("at", Float, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("worker_id", String(80)),
    Column("detail", Text),
    Index("run_events_run", "run_id", "id"),
)

# One row per session key: the lane that serializes the session's runs. Its head (best ready run)
# is kept up to date so a claim never scans the runs piled up behind busy sessions.
lanes = Table(
    "lanes",
    metadata,
    Column("tenant", String(200), primary_key=True),
    Column("session_key", String(500), primary_key=True),
    Column("active", Integer, nullable=False, server_default="0"),
    Column("max_active", Integer, nullable=False, server_default="1"),
    Column("head_seq", BigInteger),
    Column("head_priority", Integer),
    Column("head_queue", String(200)),
    _partial_index(
        "lanes_ready",
        "tenant",
        "head_queue",
        text("head_priority DESC"),
        "head_seq",
        where="head_seq IS NOT NULL AND active < max_active",
    ),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(80), primary_key=True),
    Column("host", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("queues", Text, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("lock_key", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("lost_at", Float),
    Index("workers_state", "state"),
)

# Queues are records, created on first use; limits and lock tuning change at run time.
queues = Table(
    "queues",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("concurrency", Integer),
    Column("rate_limit", Integer),
    Column("rate_period", Float),
    Column("max_attempts", Integer),
    Column("retry_initial_delay", Float),
    Column("retry_backoff", Float),
    Column("retry_max_delay", Float),
    Column("lease_seconds", Float),
    Column("heartbeat_seconds", Float),
    Column("max_stalls", Integer),
    # Running runs, kept only while a concurrency limit is set (else the row would be a hot spot).
    Column("active", Integer, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Starts of rate-limited queues, for an exact sliding window shared by all workers.
queue_starts = Table(
    "queue_starts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("queue", String(200), nullable=False),
    Column("at", Float, nullable=False),
    Index("queue_starts_window", "queue", "at"),
)

# Per-tenant fairness and limits: claims go to the ready tenant with the lowest pass, and each
# claim moves the tenant's pass on by 1/weight (stride scheduling).
tenants = Table(
    "tenants",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("weight", Float, nullable=False, server_default="1"),
    Column("concurrency", Integer),
    Column("active", Integer, nullable=False, server_default="0"),
    Column("ready", Integer, nullable=False, server_default="0"),
    Column("pass", Float, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
    # Set when a platform operator registered the tenant (API keys need it); tenants that only
    # appear through enqueue have none.
    Column("registered_at", Float),
    _partial_index("tenants_ready", "pass", where="ready > 0"),
)

pauses = Table(
    "pauses",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    # "*": every tenant (a platform pause); else only that tenant's runs.
    Column("tenant", String(200), nullable=False),
    Column("scope", String(16), nullable=False),
    Column("label", String(200), nullable=False),
    Column("value", String(500), nullable=False),
    Column("drain", Boolean, nullable=False),
    Column("paused_by", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("pauses_target", "tenant", "scope", "label", "value", unique=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("tenant", String(200)),
    Column("actor", String(200), nullable=False),
    Column("action", String(40), nullable=False),
    Column("target", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("detail", Text),
    Index("audit_log_tenant", "tenant", "id"),
)

error_groups = Table(
    "error_groups",
    metadata,
    Column("tenant", String(200), primary_key=True),
    Column("fingerprint", String(32), primary_key=True),
    Column("workflow", String(200), nullable=False),
    Column("step", String(200)),
    Column("type", String(200), nullable=False),
    Column("message", Text, nullable=False),
    Column("error_class", String(16), nullable=False),
    Column("occurrences", Integer, nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("last_run_id", String(40), nullable=False),
)

# Saved browser sessions (migration 0003): one encrypted storage state per tenant and session
# key, written under the saving run's fencing token; `version` tells a worker whether its warm
# context is still current.
browser_sessions = Table(
    "browser_sessions",
    metadata,
    Column("tenant", String(200), primary_key=True),
    Column("session_key", String(500), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("state", Text, nullable=False),
    Column("cookie_count", Integer, nullable=False),
    Column("run_id", String(40), nullable=False),
    Column("lease_token", BigInteger, nullable=False),
    Column("saved_at", Float, nullable=False),
)

# Failure diagnostics: the files live in an artifact store, these rows link them to runs.
artifacts = Table(
    "artifacts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", String(40), nullable=False),
    Column("tenant", String(200), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("step_position", Integer),
    Column("step_name", String(200)),
    Column("step_attempt", Integer),
    Column("kind", String(16), nullable=False),
    Column("content_type", String(100), nullable=False),
    Column("location", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("truncated", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", Float, nullable=False),
    Index("artifacts_run", "run_id", "id"),
)

# API keys (migration 0004): only a hash of the secret is kept; the id is the visible prefix.
# A key without a tenant is a platform key.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant", String(200)),
    Column("role", String(16), nullable=False),
    Column("name", String(200), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("rate_limit", Integer),
    Column("created_by", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("revoked_at", Float),
    Index("api_keys_tenant", "tenant"),
)

# A tenant's connection to one SaaS app; credentials sealed with greenroom.crypto.
integrations = Table(
    "integrations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant", String(200), nullable=False),
    Column("connector", String(200), nullable=False),
    Column("name", String(200), nullable=False),
    Column("settings", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("credentials", Text, nullable=False),
    Column("credentials_updated_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("integrations_name", "tenant", "name", unique=True),
)

# Who is logging in to a session (migration 0004): one login per session key at a time across
# every worker. A holder counts only while its run still holds the lease it took it with.
session_logins = Table(
    "session_logins",
    metadata,
    Column("tenant", String(200), primary_key=True),
    Column("session_key", String(500), primary_key=True),
    Column("run_id", String(40), nullable=False),
    Column("lease_token", BigInteger, nullable=False),
    Column("since", Float, nullable=False),
)

# The transactional outbox (migration 0009): what happened, written in the transaction of the
# change that made it happen (storage.outbox). Read in position order (txid, id): on PostgreSQL
# txid is the writing transaction's id, and readers see only events of transactions older than
# every transaction still open, so a later commit never lands behind a cursor; SQLite commits one
# transaction at a time, and txid is 0.
events = Table(
    "events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("txid", BigInteger, nullable=False),
    Column("tenant", String(200)),
    Column("type", String(60), nullable=False),
    Column("occurred_at", Float, nullable=False),
    Column("subject", String(250), nullable=False),
    Column("payload", Text, nullable=False),
    # Added by migration 0013: the W3C traceparent it was written under (its deliveries join it).
    Column("trace_parent", String(55)),
    Index("events_position", "txid", "id"),
    Index("events_tenant", "tenant", "txid", "id"),
    Index("events_type", "tenant", "type", "txid", "id"),
    Index("events_occurred", "occurred_at"),
)


# Event delivery (migration 0010): tenants' subscriptions, one delivery per event and
# subscription (fanned out from the events by storage.deliveries), each attempt logged.
subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant", String(200), nullable=False),
    Column("channel", String(10), nullable=False),
    Column("url", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("types", Text, nullable=False),
    Column("labels", Text, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("disabled_reason", Text),
    Column("key_id", String(40)),
    Column("secret", Text),
    Column("previous_key_id", String(40)),
    Column("previous_secret", Text),
    Column("previous_until", Float),
    Column("digest_minutes", Integer),
    Column("max_in_flight", Integer, nullable=False),
    Column("rate_per_second", Float),
    Column("tokens", Float, nullable=False),
    Column("tokens_at", Float, nullable=False),
    Column("failing_since", Float),
    Column("last_success_at", Float),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("subscriptions_tenant", "tenant", "enabled"),
)
deliveries = Table(
    "deliveries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("tenant", String(200), nullable=False),
    Column("subscription_id", String(36), nullable=False),
    Column("event_id", BigInteger, nullable=False),
    Column("state", String(10), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("leased_by", String(200)),
    Column("lease_expires_at", Float),
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("delivered_at", Float),
    UniqueConstraint("subscription_id", "event_id", name="deliveries_once"),
    _partial_index("deliveries_ended", "updated_at", where="state IN ('delivered', 'failed')"),
    Index("deliveries_tenant", "tenant", "state", "id"),
    Index("deliveries_event", "event_id"),
    Index("deliveries_subscription", "subscription_id", "state", "next_attempt_at"),
)
delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("delivery_id", BigInteger, nullable=False),
    Column("tenant", String(200), nullable=False),
    Column("subscription_id", String(36), nullable=False),
    Column("event_id", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", Float, nullable=False),
    Column("outcome", String(10), nullable=False),
    Column("status", Integer),
    Column("latency_ms", Float, nullable=False),
    Column("response", Text, nullable=False),
    Column("error", Text),
    Column("worker_id", String(200), nullable=False),
    Index("delivery_attempts_delivery", "delivery_id", "id"),
    Index("delivery_attempts_at", "at"),
)
# Where fan-out is in the events (one row, 'events'), locked by the worker fanning out.
delivery_cursor = Table(
    "delivery_cursor",
    metadata,
    Column("name", String(20), primary_key=True),
    Column("txid", BigInteger, nullable=False),
    Column("event_id", BigInteger, nullable=False),
)


# Schedules (migration 0011): cron or interval slots that start runs, each slot once
# (storage.schedules); every firing, skip and miss is recorded.
schedules = Table(
    "schedules",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant", String(200), nullable=False),
    Column("name", String(200), nullable=False),
    Column("workflow", String(200), nullable=False),
    Column("integration", String(40)),
    Column("cron", String(200)),
    Column("every_seconds", Float),
    Column("phase_seconds", Float, nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("start_at", Float),
    Column("end_at", Float),
    Column("jitter_seconds", Float, nullable=False),
    Column("input", Text, nullable=False),
    Column("labels", Text, nullable=False),
    Column("overlap", String(16), nullable=False),
    Column("catchup_seconds", Float, nullable=False),
    Column("paused", Boolean, nullable=False),
    Column("pause_note", Text),
    Column("paused_by", String(200)),
    Column("paused_at", Float),
    Column("next_slot", Float),
    Column("next_due", Float),
    Column("last_slot", Float),
    Column("last_fired_at", Float),
    Column("last_run_id", String(40)),
    Column("fired", Integer, nullable=False),
    Column("skipped", Integer, nullable=False),
    Column("missed", Integer, nullable=False),
    Column("origin", String(10), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("tenant", "name", name="schedules_name"),
    _partial_index("schedules_due", "next_due", where="NOT paused AND next_due IS NOT NULL"),
    # The license pass and upkeep read the intervals of a batch's integrations (migration 0017).
    _partial_index("schedules_integration", "integration", where="integration IS NOT NULL"),
)
schedule_firings = Table(
    "schedule_firings",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("schedule_id", String(36), nullable=False),
    Column("tenant", String(200), nullable=False),
    Column("slot", Float),
    Column("at", Float, nullable=False),
    Column("outcome", String(12), nullable=False),
    Column("run_id", String(40)),
    Column("detail", Text),
    Index("schedule_firings_schedule", "schedule_id", "id"),
    Index("schedule_firings_at", "at"),
)


# License intelligence (migration 0012): the accounts each integration's syncs read, with their
# activity and the last pass's verdict (storage.licenses); findings are the verdicts worth acting
# on, one per license and idle episode.
licenses = Table(
    "licenses",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False),
    Column("tenant", String(200), nullable=False),
    Column("integration_id", String(40), nullable=False),
    Column("user_id", String(500), nullable=False),
    Column("email", String(500)),
    Column("display_name", String(500)),
    Column("role", String(200)),
    Column("tier", String(200)),
    Column("unit_cost", Float),
    Column("currency", String(3)),
    Column("billing_period", String(8), nullable=False),
    Column("assigned_at", Float),
    Column("renewal_at", Float),
    Column("status", String(12), nullable=False),
    Column("idp_status", String(12)),
    Column("service_account", Boolean, nullable=False),
    Column("app_last_active", Float),
    Column("idp_last_active", Float),
    Column("activity", String(64), nullable=False),
    Column("activity_day", Integer),
    Column("first_seen_at", Float, nullable=False),
    Column("seen_at", Float, nullable=False),
    Column("sync_id", String(80), nullable=False),
    Column("removed_at", Float),
    Column("updated_at", Float, nullable=False),
    Column("verdict", String(20)),
    Column("action", String(10)),
    Column("confidence", String(8)),
    Column("reason_code", String(40)),
    Column("reason", Text),
    Column("monthly_savings", Float),
    Column("savings_currency", String(3)),
    Column("realizable_at", Float),
    Column("episode_start", Float),
    Column("checked_at", Float),
    Column("due_at", Float),
    UniqueConstraint("id", name="licenses_id"),
    # Integration first: baselines and staleness read all of an integration's licenses.
    UniqueConstraint("integration_id", "tenant", "user_id", name="licenses_account"),
    _partial_index("licenses_due", "due_at", where="due_at IS NOT NULL"),
    Index("licenses_tenant_verdict", "tenant", "verdict", "seq"),
)
license_sources = Table(
    "license_sources",
    metadata,
    Column("tenant", String(200), nullable=False),
    Column("integration_id", String(40), primary_key=True),
    Column("source", String(8), primary_key=True),
    Column("first_synced_at", Float, nullable=False),
    Column("synced_at", Float, nullable=False),
    Column("complete_at", Float),
    Column("stale_since", Float),
)
license_baselines = Table(
    "license_baselines",
    metadata,
    Column("tenant", String(200), nullable=False),
    Column("integration_id", String(40), primary_key=True),
    Column("threshold_days", Integer, nullable=False),
    Column("baseline_days", Float),
    Column("active_users", Integer, nullable=False),
    Column("fallback", Boolean, nullable=False),
    Column("tiers", Text, nullable=False),
    Column("computed_at", Float, nullable=False),
    Column("licenses", Integer, nullable=False),
    Column("changed", Integer, nullable=False),
)
license_policies = Table(
    "license_policies",
    metadata,
    Column("tenant", String(200), primary_key=True),
    Column("integration_id", String(40), primary_key=True),
    Column("policy", Text, nullable=False),
    Column("updated_by", String(200), nullable=False),
    Column("updated_at", Float, nullable=False),
)
license_findings = Table(
    "license_findings",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False),
    Column("tenant", String(200), nullable=False),
    Column("integration_id", String(40), nullable=False),
    Column("license_id", String(40), nullable=False),
    Column("verdict", String(20), nullable=False),
    Column("action", String(10), nullable=False),
    Column("confidence", String(8), nullable=False),
    Column("state", String(12), nullable=False),
    Column("episode_start", Float, nullable=False),
    Column("until", Float),
    Column("reason", Text, nullable=False),
    Column("monthly_savings", Float),
    Column("currency", String(3)),
    Column("realizable_at", Float),
    Column("action_run_id", String(40)),
    Column("note", Text),
    Column("opened_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("closed_at", Float),
    Column("outcome", String(12)),
    UniqueConstraint("id", name="license_findings_id"),
    UniqueConstraint("license_id", "verdict", "episode_start", name="license_findings_episode"),
    _partial_index("license_findings_open", "license_id", where="closed_at IS NULL", unique=True),
    Index("license_findings_tenant", "tenant", "state", "seq"),
)
license_seats = Table(
    "license_seats",
    metadata,
    Column("tenant", String(200), nullable=False),
    Column("integration_id", String(40), primary_key=True),
    Column("tier", String(200), primary_key=True),
    Column("purchased", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("told_unassigned", Integer, nullable=False),
)
license_digests = Table(
    "license_digests",
    metadata,
    Column("tenant", String(200), primary_key=True),
    Column("day", Integer, primary_key=True),
    Column("at", Float, nullable=False),
)


# Reports (migration 0015): tenants' subscriptions to scheduled reports (each fired by a schedule,
# delivered through event subscriptions), and each report made, once per tenant, type and period,
# with its files (HTML, CSV) kept beside it: they outlive the run that made them.
report_subscriptions = Table(
    "report_subscriptions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant", String(200), nullable=False),
    Column("report_type", String(16), nullable=False),
    Column("period", String(8), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("schedule_id", String(36), nullable=False),
    Column("subscription_ids", Text, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("report_subscriptions_tenant", "tenant", "created_at"),
)
reports = Table(
    "reports",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant", String(200), nullable=False),
    Column("report_type", String(16), nullable=False),
    Column("period", String(8), nullable=False),
    Column("period_start", Float, nullable=False),
    Column("period_end", Float, nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("summary", Text, nullable=False),
    Column("run_id", String(40)),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("published", Integer, nullable=False),
    UniqueConstraint("tenant", "report_type", "period", "period_start", name="reports_period"),
    Index("reports_tenant", "tenant", "period_start", "id"),
)
report_files = Table(
    "report_files",
    metadata,
    Column("report_id", String(36), primary_key=True),
    Column("name", String(100), primary_key=True),
    Column("content_type", String(100), nullable=False),
    Column("size", Integer, nullable=False),
    Column("encoding", String(8), nullable=False),
    Column("body", Text, nullable=False),
)
