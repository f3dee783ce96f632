"""`greenroom runs`: list, inspect, cancel, retry and prune runs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from itertools import islice
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from greenroom.api.schemas import RunDetail, RunOut
from greenroom.cli import (
    ActorOpt,
    DbOpt,
    JsonOpt,
    ReasonOpt,
    cli,
    db_url,
    default_actor,
    existing_store,
    out,
    print_json,
    remote_client,
)
from greenroom.cli.display import ago, full_json, seconds, short_json, state_text, when
from greenroom.cli.parse import parse_duration, parse_input, parse_label, parse_states, parse_time
from greenroom.errors import InvalidInput, NotFound
from greenroom.model import (
    FINISHED_STATES,
    Artifact,
    Run,
    RunEvent,
    RunState,
    StepRecord,
    StepStatus,
)
from greenroom.settings import load_settings
from greenroom.storage import RunFilter
from greenroom.storage.admin import BulkRetry

if TYPE_CHECKING:
    from greenroom.api.schemas import ArtifactOut, BulkRetryOut, EventOut, StepOut
    from greenroom.client import Client

runs_cli = typer.Typer(no_args_is_help=True, help="List, inspect, cancel, retry and prune runs.")
cli.add_typer(runs_cli, name="runs")

LabelOpt = Annotated[str | None, typer.Option("--label", help="key=value.")]
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
    f = RunFilter(
        tenant=tenant,
        states=parse_states(state),
        workflow=workflow,
        queue=queue,
        label=None if label is None else parse_label(label),
        error_group=error_group,
        limit=limit,
        include_superseded=include_superseded,
        created_after=None if since is None else parse_time(since, "--since", asked),
        created_before=None if until is None else parse_time(until, "--until", asked),
    )
    found: Sequence[Run | RunOut]
    gr = remote_client(ctx, db)
    if gr is not None:
        with gr:
            pages = gr.iter_runs(
                page_size=min(limit, 500),
                state=f.states or None,
                workflow=workflow,
                queue=queue,
                label=None if f.label is None else "=".join(f.label),
                error_group=error_group,
                tenant=tenant,
                include_superseded=include_superseded,
                created_after=f.created_after,
                created_before=f.created_before,
            )
            found = list(islice(pages, limit))
        now = time.time()
    else:
        with existing_store(db_url(ctx, db)) as store:
            found = store.runs.list_runs(f)
            now = store.clock.now()
    if json_out:
        print_json(found, RunOut.of)
        return
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
    run: Run | RunOut
    steps: Sequence[StepRecord | StepOut]
    events: Sequence[RunEvent | EventOut]
    artifacts: list[tuple[Artifact | ArtifactOut, str]]
    gr = remote_client(ctx, db)
    if gr is not None:
        with gr:
            run = detail = gr.get_run(run_id)
        if json_out:
            print_json(detail, RunDetail.of)
            return
        steps, events = detail.steps, detail.timeline
        path = f"/v1/runs/{run.id}/artifacts"
        artifacts = [(a, f"{path}/{a.id}") for a in detail.artifacts]
        where = f"locations are on {gr.url}: GET them with your API key"
    else:
        url = db_url(ctx, db)
        with existing_store(url) as store:
            stored = store.runs.run_detail(run_id)  # the id may be a prefix
        if json_out:
            print_json(stored, RunDetail.of)
            return
        run, steps, events, found = stored.run, stored.steps, stored.events, stored.artifacts
        artifacts = [(a, a.location) for a in found]
        where = local_artifacts(url) if found else ""
    show_fields(run)
    timeline = Table("AT", "+SECONDS", "STATE", "REASON", "WORKER", title="Timeline")
    for e in events:
        timeline.add_row(
            when(e.at),
            f"{e.at - run.created_at:.3f}",
            state_text(e.state),
            escape(e.reason),
            escape(e.worker_id or ""),
        )
    out.print(timeline)
    show_steps(steps)
    if run.error:
        show_error(run.error)
    show_artifacts(artifacts, where)


def show_fields(run: Run | RunOut) -> None:
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
    if isinstance(run, Run) and run.lease_owner:
        rows.append(("leased by", f"{escape(run.lease_owner)} until {when(run.lease_expires_at)}"))
    for name, value in rows:
        grid.add_row(name, value)
    out.print(grid)


def show_steps(steps: Sequence[StepRecord | StepOut]) -> None:
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


def local_artifacts(url: str) -> str:
    """Where the artifacts of runs in this database are, if they are in local files."""
    from greenroom.browser.artifacts import LocalArtifactStore, default_artifact_store

    files = default_artifact_store(load_settings(db=url))
    if isinstance(files, LocalArtifactStore):
        return f"locations are under {files.root.resolve()}"
    return ""


def show_artifacts(artifacts: list[tuple[Artifact | ArtifactOut, str]], where: str) -> None:
    """Screenshots, HTML, console logs and traces of failed steps, with where to open them."""
    if not artifacts:
        return
    table = Table("ATTEMPT", "STEP", "KIND", "SIZE", "LOCATION", title="Artifacts")
    table.caption = escape(where) or None
    for a, location in artifacts:
        step = "run"
        if a.step_name is not None:
            step = f"{a.step_position} {a.step_name} (try {a.step_attempt})"
        size = f"{a.size:,} B" + (" (truncated)" if a.truncated else "")
        table.add_row(str(a.attempt), escape(step), escape(a.kind), size, escape(location))
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
    run: Run | RunOut
    gr = remote_client(ctx, db, {"--actor": actor})
    if gr is not None:
        with gr:
            run = gr.cancel_run(run_id, reason=reason)
    else:
        with existing_store(db_url(ctx, db)) as store:
            run = store.runs.cancel(run_id, actor=actor or default_actor(), reason=reason)
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
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Retry a run that was retried already (one run only; audited)."
        ),
    ] = False,
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
    filters = {
        "--workflow": workflow,
        "--queue": queue,
        "--label": label,
        "--error-group": error_group,
        "--state": state,
        "--since": since,
        "--until": until,
        "--dry-run": dry_run or None,
    }
    bulk_only = [name for name, value in filters.items() if value is not None]
    if run_id is None and not where:
        raise InvalidInput("give a run ID, or --where and filters (see --help)")
    if run_id is not None and where:
        raise InvalidInput("give a run ID or --where, not both")
    if run_id is not None and bulk_only:
        raise InvalidInput(f"{bulk_only[0]} goes with --where, not with a run ID")
    if run_id is None and input is not None:
        raise InvalidInput("--input applies to one run (ID), not to --where")
    if run_id is None and force:
        raise InvalidInput("--force applies to one run (ID): --where never retries a run twice")
    now = time.time()
    finished_after = None if since is None else parse_time(since, "--since", now)
    finished_before = None if until is None else parse_time(until, "--until", now)
    gr = remote_client(ctx, db, {"--actor": actor})
    if gr is not None:
        from greenroom.api.schemas import BulkRetryRequest

        with gr:
            if run_id is not None:
                retry_remote(gr, run_id, reason, tenant, from_scratch, input, force)
                return
            request = {
                "state": [s.value for s in parse_states(state)] or ["failed"],
                "workflow": workflow,
                "queue": queue,
                "label": None if label is None else "=".join(parse_label(label)),
                "error_group": error_group,
                "finished_after": finished_after,
                "finished_before": finished_before,
                "from_scratch": from_scratch,
                "dry_run": dry_run,
                "reason": reason,
                "tenant": tenant,
            }
            result: BulkRetry | BulkRetryOut = gr.retry_runs(
                BulkRetryRequest.model_validate(request)
            )
    elif run_id is not None:
        new_input = None if input is None else parse_input(input)
        with existing_store(db_url(ctx, db)) as store:
            new = store.admin.retry_run(
                run_id,
                actor=actor or default_actor(),
                reason=reason,
                tenant=tenant,
                from_scratch=from_scratch,
                input=new_input,
                force=force,
            )
            assert new.retry_of is not None  # the whole id of the run given (maybe a prefix)
            old, kept = store.runs.steps(new.retry_of), store.runs.steps(new.id)
        say_retried(new.id, new.retry_of, old, kept, from_scratch, new_input is not None)
        return
    else:
        f = RunFilter(
            tenant=tenant,
            workflow=workflow,
            queue=queue,
            label=None if label is None else parse_label(label),
            error_group=error_group,
            states=parse_states(state),
            finished_after=finished_after,
            finished_before=finished_before,
        )
        with existing_store(db_url(ctx, db)) as store:
            result = store.admin.retry_where(
                f,
                actor=actor or default_actor(),
                reason=reason,
                dry_run=dry_run,
                from_scratch=from_scratch,
            )
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
    if dry_run:
        out.print(f"dry run: {result.matched} runs would be retried (nothing changed){skipped}")
    else:
        out.print(f"retried {result.matched} runs: {len(result.new_runs)} new runs queued{skipped}")
    out.print(table)


def retry_remote(
    gr: Client,
    run_id: str,
    reason: str,
    tenant: str | None,
    from_scratch: bool,
    input: str | None,
    force: bool,
) -> None:
    new_input = None if input is None else parse_input(input)
    old = gr.get_run(run_id)
    if tenant is not None and old.tenant != tenant:
        raise NotFound(f"run {run_id} not found")
    new = gr.retry_run(
        run_id, reason=reason, from_scratch=from_scratch, input=new_input, force=force
    )
    kept = gr.get_run(new.id).steps
    say_retried(new.id, old.id, old.steps, kept, from_scratch, new_input is not None)


def say_retried(
    new_id: str,
    run_id: str,
    old_steps: Sequence[StepRecord | StepOut],
    kept: Sequence[StepRecord | StepOut],
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
    """Delete finished runs (and their steps, timelines and artifacts), in small batches."""
    age = parse_duration(older_than, "--older-than")
    states = parse_states(status)
    if any(s not in FINISHED_STATES for s in states):
        raise InvalidInput("--status: only succeeded, failed and cancelled runs can be pruned")
    from greenroom.browser.artifacts import default_artifact_store

    url = db_url(ctx, db)
    files = default_artifact_store(load_settings(db=url))
    with existing_store(url) as store:
        deleted = store.admin.prune(
            older_than=age, states=states, delete_files=files.delete_run, dry_run=dry_run
        )
    if dry_run:
        out.print(
            f"dry run: {deleted} runs finished more than {older_than} ago would be deleted "
            "(nothing deleted)"
        )
        return
    out.print(f"deleted {deleted} runs finished more than {older_than} ago")
