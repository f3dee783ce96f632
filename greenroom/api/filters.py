"""What the runs list and bulk retry filter on, from the API's query or body: shared by the API's
routes and the command line's local operations, so that both select the same runs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from greenroom.errors import InvalidInput
from greenroom.model import INTEGRATION_LABEL, RunState
from greenroom.storage import RunFilter

if TYPE_CHECKING:
    from greenroom.api.schemas import BulkRetryRequest


def label_filter(integration: str | None, label: str | None) -> tuple[str, str] | None:
    """The label a listing filters on: an integration's, or a `key=value` (its pattern is
    checked by the schema; the value is everything after the first `=`)."""
    if integration is not None:
        if label is not None:
            raise InvalidInput("filter by integration or by label, not both")
        return INTEGRATION_LABEL, integration
    if label is None:
        return None
    key, _, value = label.partition("=")
    return key, value


def unix_time(moment: float | datetime) -> float:
    """One without a UTC offset is UTC, not the server's local time."""
    if isinstance(moment, datetime):
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return moment


def optional_time(moment: float | datetime | None) -> float | None:
    return None if moment is None else unix_time(moment)


def runs_filter(
    *,
    tenant: str | None = None,
    states: Sequence[RunState | str] | None = None,
    workflow: str | None = None,
    queue: str | None = None,
    integration: str | None = None,
    label: str | None = None,
    error_group: str | None = None,
    created_after: float | datetime | None = None,
    created_before: float | datetime | None = None,
    finished_after: float | datetime | None = None,
    finished_before: float | datetime | None = None,
    include_superseded: bool = False,
    before_seq: int | None = None,
    limit: int = 50,
) -> RunFilter:
    """The store's filter for the runs a listing or a bulk retry asks for."""
    return RunFilter(
        tenant=tenant,
        states=[RunState(s) for s in states or ()],
        workflow=workflow,
        queue=queue,
        label=label_filter(integration, label),
        error_group=error_group,
        created_after=optional_time(created_after),
        created_before=optional_time(created_before),
        finished_after=optional_time(finished_after),
        finished_before=optional_time(finished_before),
        include_superseded=include_superseded,
        before_seq=before_seq,
        limit=limit,
    )


def retry_filter(body: BulkRetryRequest, tenant: str | None) -> RunFilter:
    """The runs a bulk retry asks for, of `tenant` (None: every tenant's)."""
    return runs_filter(
        tenant=tenant,
        states=body.state,
        workflow=body.workflow,
        queue=body.queue,
        integration=body.integration,
        label=body.label,
        error_group=body.error_group,
        finished_after=body.finished_after,
        finished_before=body.finished_before,
    )
