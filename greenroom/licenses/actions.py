"""Acting on a finding: keep, snooze, or reclaim the license through its connector's deactivate
workflow. A reclaim enqueues one run per finding (its idempotency key is the finding's), so a
repeated or concurrent request answers the same run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from greenroom.errors import Conflict, InvalidInput
from greenroom.licenses.records import Finding

if TYPE_CHECKING:
    from greenroom.app import App

Kind = Literal["keep", "snooze", "reclaim"]


def act(
    app: App,
    finding_id: str,
    kind: Kind,
    *,
    tenant: str | None,
    actor: str,
    note: str,
    until: float | None = None,
) -> Finding:
    findings = app.store.findings
    if kind == "keep":
        return findings.keep(finding_id, tenant=tenant, actor=actor, note=note)
    if kind == "snooze":
        if until is None:
            raise InvalidInput("a snooze needs `until`")
        return findings.snooze(finding_id, tenant=tenant, until=until, actor=actor, note=note)
    return reclaim(app, finding_id, tenant=tenant, actor=actor, note=note)


def reclaim(app: App, finding_id: str, *, tenant: str | None, actor: str, note: str) -> Finding:
    """Enqueue the connector's deactivate run for the finding's account, once."""
    finding = app.store.findings.get_finding(finding_id, tenant=tenant)
    if finding.action != "reclaim":
        raise Conflict(f"finding {finding_id} recommends a {finding.action}, not a reclaim")
    if finding.action_run_id is not None:
        return finding
    integration = app.store.accounts.integration(finding.integration_id, tenant=finding.tenant)
    connector = app.connectors.get(integration.connector)
    if connector is None or connector.deactivate is None:
        raise Conflict(
            f"connector {integration.connector!r} declares no deactivate workflow: "
            "reclaim this license in the app itself"
        )
    run = app.enqueue_sync(
        connector.deactivate,
        _input(app, connector.deactivate, finding),
        tenant=finding.tenant,
        integration=integration.id,
        idempotency_key=f"finding:{finding.id}:reclaim",
        labels={"finding": finding.id},
    )
    return app.store.findings.reclaim_started(
        finding_id, tenant=tenant, run_id=run.id, actor=actor, note=note
    )


def _input(app: App, workflow: str, finding: Finding) -> dict[str, Any]:
    """The account's user_id and email, and the input of the sync run that read it, where the
    deactivate workflow's signature takes them."""
    spec = app.get_workflow(workflow).inputs
    values: dict[str, Any] = {}
    license = app.store.licenses.get_license(finding.license_id, tenant=finding.tenant)
    sync = app.store.licenses.sync_run_input(finding.license_id)
    values.update(sync)
    values.update({"user_id": license.user_id, "email": license.email})
    if spec.open:
        return {k: v for k, v in values.items() if v is not None}
    return {k: v for k, v in values.items() if k in spec.names and v is not None}
