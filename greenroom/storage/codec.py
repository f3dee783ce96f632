"""Conversions between database rows and domain records."""

from __future__ import annotations

import json
from typing import Any

from greenroom.errors import NotSerializable
from greenroom.model import (
    ApiKey,
    Artifact,
    AuditEntry,
    Channel,
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    ErrorGroup,
    Event,
    Integration,
    Overlap,
    Pause,
    PauseScope,
    Role,
    Run,
    RunEvent,
    RunState,
    SavedSession,
    Schedule,
    ScheduleFiring,
    StepRecord,
    StepStatus,
    Subscription,
    TenantInfo,
    WorkerInfo,
)
from greenroom.storage.backend import Row


def dumps(value: Any, what: str = "value") -> str:
    """Strict JSON: what cannot round-trip is refused here, at the boundary."""
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise NotSerializable(f"{what} is not JSON-serializable: {exc}") from None


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def run_from_row(row: Row) -> Run:
    return Run(
        id=row["id"],
        seq=int(row["seq"]),
        tenant=row["tenant"],
        workflow=row["workflow"],
        queue=row["queue"],
        session_key=row["session_key"],
        state=RunState(row["state"]),
        priority=int(row["priority"]),
        input=json.loads(row["input"]),
        labels=json.loads(row["labels"]),
        output=loads(row["output"]),
        error=loads(row["error"]),
        idempotency_key=row["idempotency_key"],
        attempt=int(row["attempt"]),
        max_attempts=int(row["max_attempts"]),
        timeout=row["timeout"],
        stalls=int(row["stalls"]),
        cancel_requested=bool(row["cancel_requested"]),
        lease_owner=row["lease_owner"],
        lease_token=int(row["lease_token"]),
        lease_expires_at=row["lease_expires_at"],
        available_at=row["available_at"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        pause_requested=bool(row["pause_requested"]),
        retry_of=row["retry_of"],
        superseded_by=row["superseded_by"],
        error_group=row["error_group"],
        request_hash=row["request_hash"],
        trace_parent=row["trace_parent"],
    )


def step_from_row(row: Row) -> StepRecord:
    return StepRecord(
        run_id=row["run_id"],
        position=int(row["position"]),
        name=row["name"],
        status=StepStatus(row["status"]),
        result=loads(row["result"]),
        error=loads(row["error"]),
        attempts=int(row["attempts"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def event_from_row(row: Row) -> RunEvent:
    return RunEvent(
        id=int(row["id"]),
        run_id=row["run_id"],
        at=row["at"],
        state=RunState(row["state"]),
        reason=row["reason"],
        worker_id=row["worker_id"],
        detail=loads(row["detail"]) or {},
    )


def worker_from_row(row: Row, running: list[str]) -> WorkerInfo:
    return WorkerInfo(
        id=row["id"],
        host=row["host"],
        pid=int(row["pid"]),
        queues=json.loads(row["queues"]),
        concurrency=int(row["concurrency"]),
        state=row["state"],
        started_at=row["started_at"],
        heartbeat_at=row["heartbeat_at"],
        running=running,
    )


def pause_from_row(row: Row) -> Pause:
    return Pause(
        id=int(row["id"]),
        tenant=row["tenant"],
        scope=PauseScope(row["scope"]),
        label=row["label"],
        value=row["value"],
        drain=bool(row["drain"]),
        paused_by=row["paused_by"],
        reason=row["reason"],
        created_at=row["created_at"],
    )


def audit_from_row(row: Row) -> AuditEntry:
    return AuditEntry(
        id=int(row["id"]),
        at=row["at"],
        tenant=row["tenant"],
        actor=row["actor"],
        action=row["action"],
        target=row["target"],
        reason=row["reason"],
        detail=loads(row["detail"]) or {},
    )


def error_group_from_row(row: Row) -> ErrorGroup:
    return ErrorGroup(
        tenant=row["tenant"],
        fingerprint=row["fingerprint"],
        workflow=row["workflow"],
        step=row["step"],
        type=row["type"],
        message=row["message"],
        error_class=row["error_class"],
        occurrences=int(row["occurrences"]),
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        last_run_id=row["last_run_id"],
        open=int(row.get("open") or 0),
        resolved=int(row.get("resolved") or 0),
    )


def tenant_from_row(row: Row) -> TenantInfo:
    return TenantInfo(
        name=row["name"],
        weight=float(row["weight"]),
        concurrency=row["concurrency"],
        active=int(row["active"]),
        ready=int(row["ready"]),
        registered_at=row["registered_at"],
    )


def key_from_row(row: Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        tenant=row["tenant"],
        role=Role(row["role"]),
        name=row["name"],
        hash=row["hash"],
        rate_limit=row["rate_limit"],
        created_by=row["created_by"],
        created_at=float(row["created_at"]),
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


def integration_from_row(row: Row) -> Integration:
    return Integration(
        id=row["id"],
        tenant=row["tenant"],
        connector=row["connector"],
        name=row["name"],
        settings=json.loads(row["settings"]),
        status=row["status"],
        key_id=row["key_id"],
        credentials=row["credentials"],
        credentials_updated_at=float(row["credentials_updated_at"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )


def saved_session_from_row(row: Row) -> SavedSession:
    return SavedSession(
        tenant=row["tenant"],
        session_key=row["session_key"],
        version=int(row["version"]),
        key_id=row["key_id"],
        state=row["state"],
        cookie_count=int(row["cookie_count"]),
        run_id=row["run_id"],
        saved_at=float(row["saved_at"]),
    )


def artifact_from_row(row: Row) -> Artifact:
    return Artifact(
        id=int(row["id"]),
        run_id=row["run_id"],
        tenant=row["tenant"],
        attempt=int(row["attempt"]),
        step_position=row["step_position"],
        step_name=row["step_name"],
        step_attempt=row["step_attempt"],
        kind=row["kind"],
        content_type=row["content_type"],
        location=row["location"],
        size=int(row["size"]),
        truncated=bool(row["truncated"]),
        created_at=float(row["created_at"]),
    )


def outbox_event_from_row(row: Row) -> Event:
    return Event(
        id=row["id"],
        tenant=row["tenant"],
        type=row["type"],
        occurred_at=row["occurred_at"],
        subject=row["subject"],
        payload=loads(row["payload"]),
        trace_parent=row.get("trace_parent"),
    )


def subscription_from_row(row: Row) -> Subscription:
    return Subscription(
        id=row["id"],
        tenant=row["tenant"],
        channel=Channel(row["channel"]),
        url=row["url"],
        description=row["description"],
        types=json.loads(row["types"]),
        labels=json.loads(row["labels"]),
        enabled=bool(row["enabled"]),
        disabled_reason=row["disabled_reason"],
        key_id=row["key_id"],
        secret=row["secret"],
        previous_key_id=row["previous_key_id"],
        previous_secret=row["previous_secret"],
        previous_until=_float(row["previous_until"]),
        digest_minutes=row["digest_minutes"],
        max_in_flight=int(row["max_in_flight"]),
        rate_per_second=_float(row["rate_per_second"]),
        failing_since=_float(row["failing_since"]),
        last_success_at=_float(row["last_success_at"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )


def delivery_from_row(row: Row) -> Delivery:
    return Delivery(
        id=int(row["id"]),
        tenant=row["tenant"],
        subscription_id=row["subscription_id"],
        event_id=int(row["event_id"]),
        state=DeliveryState(row["state"]),
        attempts=int(row["attempts"]),
        next_attempt_at=float(row["next_attempt_at"]),
        last_status=row["last_status"],
        last_error=row["last_error"],
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        delivered_at=_float(row["delivered_at"]),
    )


def delivery_attempt_from_row(row: Row) -> DeliveryAttempt:
    return DeliveryAttempt(
        id=int(row["id"]),
        delivery_id=int(row["delivery_id"]),
        subscription_id=row["subscription_id"],
        event_id=int(row["event_id"]),
        attempt=int(row["attempt"]),
        at=float(row["at"]),
        outcome=row["outcome"],
        status=row["status"],
        latency_ms=float(row["latency_ms"]),
        response=row["response"],
        error=row["error"],
        worker_id=row["worker_id"],
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def schedule_from_row(row: Row) -> Schedule:
    return Schedule(
        id=row["id"],
        tenant=row["tenant"],
        name=row["name"],
        workflow=row["workflow"],
        integration=row["integration"],
        cron=row["cron"],
        every_seconds=_float(row["every_seconds"]),
        phase_seconds=float(row["phase_seconds"]),
        timezone=row["timezone"],
        start_at=_float(row["start_at"]),
        end_at=_float(row["end_at"]),
        jitter_seconds=float(row["jitter_seconds"]),
        input=json.loads(row["input"]),
        labels=json.loads(row["labels"]),
        overlap=Overlap(row["overlap"]),
        catchup_seconds=float(row["catchup_seconds"]),
        paused=bool(row["paused"]),
        pause_note=row["pause_note"],
        paused_by=row["paused_by"],
        paused_at=_float(row["paused_at"]),
        next_slot=_float(row["next_slot"]),
        next_due=_float(row["next_due"]),
        last_slot=_float(row["last_slot"]),
        last_fired_at=_float(row["last_fired_at"]),
        last_run_id=row["last_run_id"],
        fired=int(row["fired"]),
        skipped=int(row["skipped"]),
        missed=int(row["missed"]),
        origin=row["origin"],
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )


def schedule_firing_from_row(row: Row) -> ScheduleFiring:
    return ScheduleFiring(
        id=int(row["id"]),
        schedule_id=row["schedule_id"],
        slot=_float(row["slot"]),
        at=float(row["at"]),
        outcome=row["outcome"],
        run_id=row["run_id"],
        detail=loads(row["detail"]),
    )
