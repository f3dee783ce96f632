"""Queue controls: `greenroom queues`, `pause`, `resume`, `pauses` and `tenants`."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from greenroom.api.schemas import PauseCreate, PauseOut, QueueOut, QueueUpdate, TenantUpdate
from greenroom.cli import ActorOpt, DbOpt, JsonOpt, ReasonOpt, cli, err, out, print_json
from greenroom.cli.connect import operations
from greenroom.cli.display import ago, number
from greenroom.cli.operations import Operations
from greenroom.cli.parse import parse_label, parse_rate_limit, parse_setting
from greenroom.errors import InvalidInput, NotFound
from greenroom.model import ALL_TENANTS, Pause, PauseScope, RunState

queues_cli = typer.Typer(help="Queues: runs by state, limits; `queues set` changes them.")
tenants_cli = typer.Typer(help="Tenants: fairness weight and limits; `tenants set` changes them.")
cli.add_typer(queues_cli, name="queues")
cli.add_typer(tenants_cli, name="tenants")

COUNTED = (
    RunState.QUEUED,
    RunState.PAUSED,
    RunState.DELAYED,
    RunState.RUNNING,
    RunState.SUCCEEDED,
    RunState.FAILED,
    RunState.CANCELLED,
)


# -- queues --------------------------------------------------------------------------------


@queues_cli.callback(invoke_without_command=True)
def queues(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Count only this tenant's runs.")] = None,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List queues: runs by state (ended ones: the last day's), paused or not, limits and runs
    finished in the last minute."""
    if ctx.invoked_subcommand is not None:
        return
    with operations(ctx, db) as ops:
        found = ops.queues(tenant=tenant)
    if json_out:
        print_json(found)
        return
    if not found:
        out.print("no queues")
        return
    table = Table("QUEUE", *(s.value.upper() for s in COUNTED), "PAUSED?", "CONCURRENCY")
    table.add_column("RATE LIMIT")
    table.add_column("DONE/MIN")
    for q in found:
        table.add_row(
            escape(q.name),
            *(str(q.counts.get(s.value, 0)) for s in COUNTED),
            "[red]yes[/]" if q.paused else "no",
            number(q.concurrency),
            rate_text(q),
            str(q.finished_last_minute),
        )
    out.print(table)


def rate_text(q: QueueOut) -> str:
    if q.rate_limit is None or q.rate_period is None:
        return "-"
    return f"{q.rate_limit}/{number(q.rate_period)}s"


@queues_cli.command("set")
def queues_set(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Queue name (created if new).")],
    reason: ReasonOpt,
    concurrency: Annotated[
        str | None, typer.Option(help="Runs at once across all workers, or none.")
    ] = None,
    rate_limit: Annotated[
        str | None, typer.Option(help="Starts per period across all workers: 10/60s, or none.")
    ] = None,
    max_attempts: Annotated[str | None, typer.Option(help="Default attempts per run.")] = None,
    retry_initial_delay: Annotated[
        str | None, typer.Option(help="Default seconds before the first retry.")
    ] = None,
    retry_backoff: Annotated[str | None, typer.Option(help="Delay multiplier per retry.")] = None,
    retry_max_delay: Annotated[str | None, typer.Option(help="Longest retry delay.")] = None,
    lease_seconds: Annotated[str | None, typer.Option(help="Lease of a claimed run.")] = None,
    heartbeat_seconds: Annotated[
        str | None, typer.Option(help="Heartbeat interval (under half the lease).")
    ] = None,
    max_stalls: Annotated[str | None, typer.Option(help="Lost leases before a run fails.")] = None,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Change a queue's limits, default retry policy or lock tuning ("none" clears one);
    workers pick the change up within seconds."""
    given = {
        "concurrency": concurrency,
        "max_attempts": max_attempts,
        "retry_initial_delay": retry_initial_delay,
        "retry_backoff": retry_backoff,
        "retry_max_delay": retry_max_delay,
        "lease_seconds": lease_seconds,
        "heartbeat_seconds": heartbeat_seconds,
        "max_stalls": max_stalls,
    }
    update = queue_update(given, rate_limit, reason)
    with operations(ctx, db, actor=actor) as ops:
        q = ops.update_queue(name, update)
    settings = {
        "concurrency": number(q.concurrency),
        "rate limit": rate_text(q),
        "max attempts": number(q.max_attempts),
        "retry initial delay": number(q.retry_initial_delay),
        "retry backoff": number(q.retry_backoff),
        "retry max delay": number(q.retry_max_delay),
        "lease seconds": number(q.lease_seconds),
        "heartbeat seconds": number(q.heartbeat_seconds),
        "max stalls": number(q.max_stalls),
    }
    shown = ", ".join(f"{k} {v}" for k, v in settings.items() if v != "-") or "no limits"
    out.print(f"queue {escape(q.name)}: {shown} (unset settings: the workers' defaults)")


def queue_update(given: dict[str, str | None], rate_limit: str | None, reason: str) -> QueueUpdate:
    """The settings given as options ("none" clears one), as the API's change: only the
    fields set are changed."""
    changes: dict[str, Any] = {
        field: parse_setting(text, "--" + field.replace("_", "-"))
        for field, text in given.items()
        if text is not None
    }
    if rate_limit is not None:
        rate = parse_rate_limit(rate_limit)
        changes["rate_limit"], changes["rate_period"] = rate or (None, None)
    if not changes:
        raise InvalidInput("nothing to change: give at least one setting (see --help)")
    return QueueUpdate.model_validate({**changes, "reason": reason})


# -- pauses --------------------------------------------------------------------------------


ScopeOpt = Annotated[str | None, typer.Option(show_default=False)]
ForTenantOpt = Annotated[
    str | None, typer.Option("--for-tenant", help="Only this tenant's runs (default: all).")
]


def pause_target(
    queue: str | None,
    tenant: str | None,
    workflow: str | None,
    session: str | None,
    label: str | None,
) -> tuple[PauseScope, str, str]:
    """(scope, value, label key) from exactly one scope option."""
    given = [
        (scope, value)
        for scope, value in (
            (PauseScope.QUEUE, queue),
            (PauseScope.TENANT, tenant),
            (PauseScope.WORKFLOW, workflow),
            (PauseScope.SESSION, session),
            (PauseScope.LABEL, label),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise InvalidInput(
            "give exactly one of --queue, --tenant, --workflow, --session or --label"
        )
    scope, value = given[0]
    if scope is PauseScope.LABEL:
        key, value = parse_label(value)
        return scope, value, key
    return scope, value, ""


@cli.command()
def pause(
    ctx: typer.Context,
    reason: ReasonOpt,
    queue: ScopeOpt = None,
    tenant: ScopeOpt = None,
    workflow: ScopeOpt = None,
    session: Annotated[str | None, typer.Option(help="A session key.")] = None,
    label: Annotated[str | None, typer.Option(help="key=value.")] = None,
    for_tenant: ForTenantOpt = None,
    no_drain: Annotated[
        bool,
        typer.Option("--no-drain", help="Running runs stop at their next step (default: finish)."),
    ] = False,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Hold every run of a queue, tenant, workflow, session or label that has not started.

    A pause may be set before its runs arrive: one on a tenant, queue or integration that does
    not exist (yet) is set, with a warning, since a typo would hold nothing."""
    scope, value, key = pause_target(queue, tenant, workflow, session, label)
    wanted = {"scope": scope.value, "value": value, "label": key, "drain": not no_drain}
    request = PauseCreate.model_validate({**wanted, "reason": reason, "tenant": for_tenant})
    with operations(ctx, db, actor=actor) as ops:
        unknown = unknown_target(ops, scope, value, key)
        existing = {p.id for p in ops.pauses()}
        made = ops.create_pause(request)
    if unknown:
        warning = f"warning: {unknown} (yet): the pause holds its runs when they come"
        err.print(warning, markup=False)
    p = as_pause(made)
    if made.id in existing:
        out.print(
            f"{escape(p.describe())} was already paused by {escape(p.paused_by)}: "
            f"{escape(p.reason)} ({p.held} runs held)"
        )
        return
    running = "running runs finish" if p.drain else "running runs stop at their next step boundary"
    out.print(f"paused {escape(p.describe())}: {p.held} waiting runs held, {running}")


def unknown_target(ops: Operations, scope: PauseScope, value: str, key: str) -> str | None:
    """What a pause names that does not exist, if it does: a typo would hold nothing."""
    lookups: dict[PauseScope, tuple[str, Callable[[str], object]]] = {
        PauseScope.TENANT: ("tenant", ops.get_tenant),
        PauseScope.QUEUE: ("queue", ops.get_queue),
    }
    if scope is PauseScope.LABEL and key == "integration":
        lookups[PauseScope.LABEL] = ("integration", ops.get_integration)
    found = lookups.get(scope)
    if found is None:
        return None
    what, get = found
    try:
        get(value)
    except NotFound:
        return f"there is no {what} {value!r}"
    return None


@cli.command()
def resume(
    ctx: typer.Context,
    reason: ReasonOpt,
    queue: ScopeOpt = None,
    tenant: ScopeOpt = None,
    workflow: ScopeOpt = None,
    session: Annotated[str | None, typer.Option(help="A session key.")] = None,
    label: Annotated[str | None, typer.Option(help="key=value.")] = None,
    for_tenant: ForTenantOpt = None,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Lift a pause: the runs it held go back to the queue in their order."""
    scope, value, key = pause_target(queue, tenant, workflow, session, label)
    with operations(ctx, db, actor=actor) as ops:
        found = find_pause([as_pause(p) for p in ops.pauses()], scope, value, key, for_tenant)
        resumed = ops.resume_pause(found.id, reason=reason).resumed
    what = f"label {key}={value}" if key else f"{scope.value} {value}"
    out.print(f"resumed {escape(what)}: {resumed} runs queued again")


@cli.command()
def pauses(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Pauses that hold this tenant's runs.")] = None,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List pauses in force: scope, what, tenant, drain, who, when and why."""
    with operations(ctx, db) as ops:
        found = [p for p in ops.pauses() if tenant is None or p.tenant in (None, tenant)]
    now = time.time()
    if json_out:
        print_json(found)
        return
    if not found:
        out.print("no pauses")
        return
    table = Table("SCOPE", "WHAT", "TENANT", "HELD", "DRAIN", "BY", "WHEN", "REASON")
    for p in found:
        table.add_row(
            p.scope,
            escape(f"{p.label}={p.value}" if p.label else p.value),
            "all" if p.tenant is None else escape(p.tenant),
            str(p.held),
            "yes" if p.drain else "no",
            escape(p.paused_by),
            ago(p.created_at, now),
            escape(p.reason),
        )
    out.print(table)


def as_pause(p: PauseOut) -> Pause:
    """A pause in the API's shape as the store's model (its tenant "*" when it holds every
    one), which says what it holds and finds the one `resume` means."""
    return Pause(
        scope=PauseScope(p.scope),
        value=p.value,
        label=p.label,
        tenant=p.tenant or ALL_TENANTS,
        drain=p.drain,
        paused_by=p.paused_by,
        reason=p.reason,
        created_at=p.created_at,
        id=p.id,
        held=p.held,
    )


def find_pause(
    pauses: Sequence[Pause], scope: PauseScope, value: str, key: str, for_tenant: str | None
) -> Pause:
    """The pause `resume` lifts. Without --for-tenant: the only one on that target, else the
    platform's; through the API, a tenant's key sees only its own and the platform's."""
    found = [p for p in pauses if (p.scope, p.value, p.label) == (scope, value, key)]
    if for_tenant is not None:
        found = [p for p in found if p.tenant == for_tenant]
    elif len(found) > 1:
        found = [p for p in found if p.tenant == ALL_TENANTS] or found
    target = Pause(scope=scope, value=value, label=key, tenant=for_tenant or ALL_TENANTS)
    if not found:
        raise NotFound(f"no pause on {target.describe()}")
    if len(found) > 1:
        tenants = ", ".join(sorted(p.tenant for p in found))
        raise InvalidInput(f"{target.describe()} is paused for {tenants}: give --for-tenant")
    return found[0]


# -- tenants -------------------------------------------------------------------------------


@tenants_cli.callback(invoke_without_command=True)
def tenants(ctx: typer.Context, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """List tenants: fairness weight, concurrency limit, runs running and ready."""
    if ctx.invoked_subcommand is not None:
        return
    # Running runs are few (at most the workers' slots): count them rather than trust the
    # per-tenant counter, which is only kept for tenants with a limit.
    with operations(ctx, db) as ops:
        found = ops.tenants()
        running = Counter(r.tenant for r in ops.iter_runs(state=["running"], page_size=500))
    if json_out:
        print_json(found)
        return
    if not found:
        out.print("no tenants")
        return
    table = Table("TENANT", "WEIGHT", "CONCURRENCY", "RUNNING", "READY")
    for t in found:
        table.add_row(
            escape(t.name),
            number(t.weight),
            number(t.concurrency),
            str(running[t.name]),
            str(t.ready),
        )
    out.print(table)


@tenants_cli.command("set")
def tenants_set(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Tenant name.")],
    reason: ReasonOpt,
    weight: Annotated[
        float | None, typer.Option(help="Share of contended slots (default 1).")
    ] = None,
    concurrency: Annotated[
        str | None, typer.Option(help="Runs at once across all workers, or none.")
    ] = None,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Change a tenant's fairness weight or concurrency limit ("none" clears the limit)."""
    limit = None if concurrency is None else parse_setting(concurrency, "--concurrency")
    if isinstance(limit, float):
        raise InvalidInput(f"--concurrency must be a whole number or none, got {concurrency!r}")
    if weight is None and concurrency is None:
        raise InvalidInput("nothing to change: give --weight or --concurrency")
    given: dict[str, Any] = {"reason": reason}
    if weight is not None:
        given["weight"] = weight
    if concurrency is not None:
        given["concurrency"] = limit  # None clears the limit
    with operations(ctx, db, actor=actor) as ops:
        t = ops.update_tenant(name, TenantUpdate.model_validate(given))
    out.print(
        f"tenant {escape(t.name)}: weight {number(t.weight)}, concurrency {number(t.concurrency)}"
    )
