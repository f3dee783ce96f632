"""`greenroom runs`: list, inspect, cancel, retry and prune runs."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from greenroom.api.schemas import (
    BulkRetryOut,
    BulkRetryRequest,
    PruneRequest,
    RunDetail,
    RunOut,
    StepOut,
)
from greenroom.cli import (
    ActorOpt,
    DbOpt,
    JsonOpt,
    ReasonOpt,
    cli,
    out,
    print_json,
)
from greenroom.cli.connect import operations
from greenroom.cli.display import ago, full_json, seconds, short_json, state_text, when
from greenroom.cli.operations import LocalOperations, Operations
from greenroom.cli.parse import parse_duration, parse_input, parse_label, parse_states, parse_time
from greenroom.errors import InvalidInput, NotFound
from greenroom.model import FINISHED_STATES, RunState, StepStatus
from greenroom.settings import Settings

if TYPE_CHECKING:
    from greenroom.client import RunFilters

runs_cli = typer.Typer(no_args_is_help=True, help="List, inspect, cancel, retry and prune runs.")
cli.add_typer(runs_cli, name="runs")

LabelOpt = Annotated[str | None, typer.Option("--label", help="key=value.")]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Retry a run that was retried already (one run only; audited)."),
]
ErrorGroupOpt = Annotated[
    str | None, typer.Option("--error-group", help="Error group fingerprint (greenroom errors).")
]


@runs_cli.command("list")
def runs_list(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="States, comma-separated.")] = None,
    workflow: Annotated[str | None, typer.Option()] = None,
    tenant: Annotated[str | None, typer.Option()] = None,
    queue: Annotated[str | None, typer.Option()] = None,
    label: LabelOpt = None,
    error_group: ErrorGroupOpt = None,
    include_superseded: Annotated[
        bool,
        typer.Option("--include-superseded", help="Also failed runs that were retried."),
    ] = False,
    since: Annotated[
        str | None, typer.Option(help="Created since: a duration ago (12h) or an ISO time.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Created before: a duration ago or an ISO time.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List runs, newest first (failed runs that were retried are left out: their retries
    stand for them)."""
    asked = time.time()
    filters: RunFilters = {
        "state": parse_states(state) or None,
        "workflow": workflow,
        "queue": queue,
        "label": None if label is None else "=".join(parse_label(label)),
        "error_group": error_group,
        "tenant": tenant,
        "include_superseded": include_superseded,
        "created_after": None if since is None else parse_time(since, "--since", asked),
        "created_before": None if until is None else parse_time(until, "--until", asked),
    }
    with operations(ctx, db) as ops:
        pages = ops.iter_runs(page_size=min(limit, 500), **filters)
        found = list(islice(pages, limit))
    if json_out:
        print_json(found)
    else:
        show_runs(found, time.time())


def show_runs(found: Sequence[RunOut], now: float) -> None:
    if not found:
        out.print("no runs")
        return
    table = Table("ID", "WORKFLOW", "TENANT", "STATE", "ATTEMPT", "STALLS", "CREATED", "TOOK")
    table.columns[0].no_wrap = True
    for run in found:
        table.add_row(
            run.id[:8],
            escape(run.workflow),
            escape(run.tenant),
            state_text(run.state) + (" [dim](retried)[/]" if run.superseded_by else ""),
            f"{run.attempt}/{run.max_attempts}",
            str(run.stalls),
            ago(run.created_at, now),
            seconds(run.started_at, run.finished_at),
        )
    out.print(table)


@runs_cli.command("show")
def runs_show(
    ctx: typer.Context,
    run_id: Annotated[
        str, typer.Argument(metavar="ID", help="Run id, or a unique prefix of 8+ characters.")
    ],
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Show a run: its fields, timeline, steps, error and failure artifacts (--json: all of
    it, output and error whole, as the API's RunDetail)."""
    with operations(ctx, db) as ops:
        run = ops.get_run(run_id)
        where = artifact_locations(ops, run) if run.artifacts else ({}, "")
        lease = lease_text(ops, run)
    if json_out:
        print_json(run)
        return
    show_fields(run, lease)
    timeline = Table("AT", "+SECONDS", "STATE", "REASON", "WORKER", title="Timeline")
    for e in run.timeline:
        timeline.add_row(
            when(e.at),
            f"{e.at - run.created_at:.3f}",
            state_text(e.state),
            escape(e.reason),
            escape(e.worker_id or ""),
        )
    out.print(timeline)
    show_steps(run.steps)
    if run.error:
        show_error(run.error)
    show_artifacts(run, where)


def lease_text(ops: Operations, run: RunOut) -> str | None:
    """Which worker holds a running run, and until when: on a database only (the API does
    not say), for who looks into a run that seems stuck."""
    if not isinstance(ops, LocalOperations):
        return None
    stored = ops.store.runs.get_run(run.id)
    if stored.lease_owner is None:
        return None
    return f"{escape(stored.lease_owner)} until {when(stored.lease_expires_at)}"


def show_fields(run: RunOut, lease: str | None = None) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")  # whole values, folded, never cut
    rows: list[tuple[str, str]] = [
        ("run", run.id),
        ("workflow", escape(run.workflow)),
        ("state", state_text(run.state) + (" (cancel requested)" if run.cancel_requested else "")),
        ("tenant", escape(run.tenant)),
        ("queue", escape(run.queue)),
        ("session", escape(run.session_key or "-")),
        ("priority", str(run.priority)),
        ("attempt", f"{run.attempt} of {run.max_attempts}"),
        ("stalls", str(run.stalls)),
        ("idempotency key", escape(run.idempotency_key or "-")),
        ("labels", short_json(run.labels)),
        ("input", full_json(run.input)),
        ("output", full_json(run.output)),
        ("created", when(run.created_at)),
        ("started", when(run.started_at)),
        ("finished", when(run.finished_at)),
    ]
    if run.retry_of:
        rows.append(("retry of", run.retry_of))
    if run.superseded_by:
        rows.append(("superseded by", f"{run.superseded_by} (its retry stands for it)"))
    if run.error_group:
        rows.append(("error group", escape(run.error_group)))
    if lease:
        rows.append(("leased by", lease))
    for name, value in rows:
        grid.add_row(name, value)
    out.print(grid)


def show_steps(steps: Sequence[StepOut]) -> None:
    if not steps:
        out.print("no steps recorded")
        return
    table = Table("#", "STEP", "STATUS", "ATTEMPTS", "DURATION", "FINISHED", title="Steps")
    for s in steps:
        style = "green" if s.status == StepStatus.COMPLETED else "red"
        table.add_row(
            str(s.position),
            escape(s.name),
            f"[{style}]{s.status}[/]",
            str(s.attempts),
            seconds(s.started_at, s.finished_at),
            when(s.finished_at),
        )
    out.print(table)


def artifact_locations(ops: Operations, run: RunDetail) -> tuple[dict[int, str], str]:
    """Where to open each artifact of a run, by id, and a caption saying where that is: files
    of the database's artifact store, or URLs on the server (the API does not say where it
    keeps its files)."""
    if isinstance(ops, LocalOperations):
        stored = ops.store.sessions.artifacts(run.id)
        return {a.id: a.location for a in stored}, local_artifacts(ops.settings())
    from greenroom.client import Client

    assert isinstance(ops, Client)
    path = f"/v1/runs/{run.id}/artifacts"
    where = f"locations are on {ops.url}: GET them with your API key"
    return {a.id: f"{path}/{a.id}" for a in run.artifacts}, where


def local_artifacts(settings: Settings) -> str:
    """Where the artifacts of runs in this database are, if they are in local files."""
    from greenroom.browser.artifacts import LocalArtifactStore, default_artifact_store

    files = default_artifact_store(settings)
    if isinstance(files, LocalArtifactStore):
        return f"locations are under {files.root.resolve()}"
    return ""


def show_artifacts(run: RunDetail, where: tuple[dict[int, str], str]) -> None:
    """Screenshots, HTML, console logs and traces of failed steps, with where to open them."""
    if not run.artifacts:
        return
    locations, caption = where
    table = Table("ATTEMPT", "STEP", "KIND", "SIZE", "LOCATION", title="Artifacts")
    table.caption = escape(caption) or None
    for a in run.artifacts:
        step = "run"
        if a.step_name is not None:
            step = f"{a.step_position} {a.step_name} (try {a.step_attempt})"
        size = f"{a.size:,} B" + (" (truncated)" if a.truncated else "")
        place = locations.get(a.id, "-")
        table.add_row(str(a.attempt), escape(step), escape(a.kind), size, escape(place))
    out.print(table)


def show_error(error: dict[str, Any]) -> None:
    where = []
    if error.get("step"):
        where.append(f"in step {error['step']!r}")
    if error.get("attempt"):
        where.append(f"attempt {error['attempt']}")
    suffix = f" ({', '.join(where)})" if where else ""
    out.print(
        f"[bold red]Error[/]{escape(suffix)}: "
        f"{escape(str(error.get('type')))}: {escape(str(error.get('message')))}"
    )
    if error.get("traceback"):
        out.print(escape(str(error["traceback"]).rstrip()), soft_wrap=True)


@runs_cli.command("cancel")
def runs_cancel(
    ctx: typer.Context,
    run_id: Annotated[
        str, typer.Argument(metavar="ID", help="Run id, or a unique prefix of 8+ characters.")
    ],
    reason: ReasonOpt,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Cancel a run: at once if it waits, at its next await if it is running."""
    with operations(ctx, db, actor=actor) as ops:
        run = ops.cancel_run(run_id, reason=reason)
    if run.state is RunState.CANCELLED:
        out.print(f"run {run.id} cancelled")
    elif run.state is RunState.RUNNING:
        out.print(f"run {run.id} is running: cancel requested, it stops at its next await")
    else:
        raise InvalidInput(f"run {run.id} already {run.state.value}: nothing to cancel")


# -- retry ---------------------------------------------------------------------------------


@runs_cli.command("retry")
def runs_retry(
    ctx: typer.Context,
    reason: ReasonOpt,
    run_id: Annotated[
        str | None,
        typer.Argument(metavar="ID", help="The failed or cancelled run (or an 8+ prefix)."),
    ] = None,
    where: Annotated[
        bool, typer.Option("--where", help="Retry every run matching the filters below.")
    ] = False,
    from_scratch: Annotated[
        bool, typer.Option("--from-scratch", help="Re-run every step, keep no results.")
    ] = False,
    input: Annotated[
        str | None, typer.Option("--input", help="New input as a JSON object (one run only).")
    ] = None,
    force: ForceOpt = False,
    tenant: Annotated[str | None, typer.Option()] = None,
    workflow: Annotated[str | None, typer.Option()] = None,
    queue: Annotated[str | None, typer.Option()] = None,
    label: LabelOpt = None,
    error_group: ErrorGroupOpt = None,
    state: Annotated[
        str | None, typer.Option(help="failed, cancelled or both (default: failed).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Finished since: a duration ago (12h) or an ISO time.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Finished before: a duration ago or an ISO time.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be retried, change nothing.")
    ] = False,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Retry a failed or cancelled run (ID) or every matching one (--where): from the failed
    step, completed steps keeping their results, or --from-scratch."""
    bulk = {
        "workflow": workflow,
        "queue": queue,
        "label": label,
        "error_group": error_group,
        "state": state,
        "since": since,
        "until": until,
    }
    check_retry(run_id, where, input, force, {**bulk, "dry_run": dry_run or None})
    new_input = None if input is None else parse_input(input)
    request = bulk_retry(bulk, reason, tenant, from_scratch, dry_run) if where else None
    with operations(ctx, db, actor=actor) as ops:
        if run_id is not None:
            retry_one(ops, run_id, reason, tenant, from_scratch, new_input, force)
        elif request is not None:
            say_bulk_retried(ops.retry_runs(request))


def check_retry(
    run_id: str | None,
    where: bool,
    input: str | None,
    force: bool,
    bulk_only: Mapping[str, object],
) -> None:
    """One run (ID) or --where and filters, each with the options that apply to it."""
    given = [
        "--" + name.replace("_", "-") for name, value in bulk_only.items() if value is not None
    ]
    if run_id is None and not where:
        raise InvalidInput("give a run ID, or --where and filters (see --help)")
    if run_id is not None and where:
        raise InvalidInput("give a run ID or --where, not both")
    if run_id is not None and given:
        raise InvalidInput(f"{given[0]} goes with --where, not with a run ID")
    if run_id is None and input is not None:
        raise InvalidInput("--input applies to one run (ID), not to --where")
    if run_id is None and force:
        raise InvalidInput("--force applies to one run (ID): --where never retries a run twice")


def bulk_retry(
    bulk: Mapping[str, str | None],
    reason: str,
    tenant: str | None,
    from_scratch: bool,
    dry_run: bool,
) -> BulkRetryRequest:
    """The API's bulk retry for the filters given as options (--since and --until: finished
    then); failed runs unless --state says otherwise."""
    states = [s.value for s in parse_states(bulk["state"])] or ["failed"]
    if not set(states) <= {"failed", "cancelled"}:
        raise InvalidInput("--state: only failed or cancelled runs can be retried")
    now = time.time()
    since, until, label = bulk["since"], bulk["until"], bulk["label"]
    request = {
        "state": states,
        "workflow": bulk["workflow"],
        "queue": bulk["queue"],
        "label": None if label is None else "=".join(parse_label(label)),
        "error_group": bulk["error_group"],
        "finished_after": None if since is None else parse_time(since, "--since", now),
        "finished_before": None if until is None else parse_time(until, "--until", now),
        "from_scratch": from_scratch,
        "dry_run": dry_run,
        "reason": reason,
        "tenant": tenant,
    }
    return BulkRetryRequest.model_validate(request)


def retry_one(
    ops: Operations,
    run_id: str,
    reason: str,
    tenant: str | None,
    from_scratch: bool,
    new_input: dict[str, Any] | None,
    force: bool,
) -> None:
    """Retry one run and say which step its retry starts from, and with how many kept."""
    old = ops.get_run(run_id)  # the id may be a prefix
    if tenant is not None and old.tenant != tenant:
        raise NotFound(f"run {run_id} not found")
    new = ops.retry_run(
        old.id, reason=reason, from_scratch=from_scratch, input=new_input, force=force
    )
    kept = ops.get_run(new.id).steps
    say_retried(new.id, old.id, old.steps, kept, from_scratch, new_input is not None)


def say_retried(
    new_id: str,
    run_id: str,
    old_steps: Sequence[StepOut],
    kept: Sequence[StepOut],
    from_scratch: bool,
    edited: bool = False,
) -> None:
    if from_scratch:
        start = "from scratch"
    else:
        pending = [s for s in old_steps if s.status != StepStatus.COMPLETED]
        start = f"from step {pending[0].name!r}" if pending else "after its last completed step"
        start += f", keeping {len(kept)} completed steps"
    with_input = " with the new input" if edited else ""
    out.print(f"{new_id} created: retry of {run_id} {escape(start)}{with_input}")


def say_bulk_retried(result: BulkRetryOut) -> None:
    """How many runs were (or would be) retried, and from which steps."""
    skipped = (
        f"; {result.skipped_superseded} matching runs were retried already and are left alone"
        if result.skipped_superseded
        else ""
    )
    if not result.matched:
        out.print(f"no runs match: nothing to retry{skipped}")
        return
    table = Table("RE-RUNS FROM", "RUNS")
    for step, count in sorted(result.rerun_from.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(escape(step), str(count))
    if result.dry_run:
        out.print(f"dry run: {result.matched} runs would be retried (nothing changed){skipped}")
    else:
        out.print(f"retried {result.matched} runs: {len(result.new_runs)} new runs queued{skipped}")
    out.print(table)


# -- retention -----------------------------------------------------------------------------


@runs_cli.command("prune")
def runs_prune(
    ctx: typer.Context,
    older_than: Annotated[
        str, typer.Option("--older-than", help="Finished longer ago than this: 30d, 12h, 15m.")
    ],
    status: Annotated[
        str,
        typer.Option(help="Finished states to delete, comma-separated."),
    ] = "succeeded,failed,cancelled",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say how many runs would be deleted, delete none.")
    ] = False,
    db: DbOpt = None,
) -> None:
    """Delete finished runs (and their steps, timelines and artifacts), in small batches
    (with --url: as a platform key)."""
    age = parse_duration(older_than, "--older-than")
    states = parse_states(status)
    if any(s not in FINISHED_STATES for s in states):
        raise InvalidInput("--status: only succeeded, failed and cancelled runs can be pruned")
    request = {"older_than": age, "state": [s.value for s in states], "dry_run": dry_run}
    with operations(ctx, db) as ops:
        deleted = ops.prune_runs(PruneRequest.model_validate(request)).deleted
    if dry_run:
        out.print(
            f"dry run: {deleted} runs finished more than {older_than} ago would be deleted "
            "(nothing deleted)"
        )
        return
    out.print(f"deleted {deleted} runs finished more than {older_than} ago")
