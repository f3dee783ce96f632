"""`greenroom subscriptions` and `greenroom deliveries`: where events go, how each delivery went,
and sending again (docs/events.md, "Delivery")."""

from __future__ import annotations

import time
from itertools import islice
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from greenroom.api.delivery_schemas import (
    RecoverIn,
    SubscriptionCreate,
    SubscriptionOut,
    SubscriptionUpdate,
)
from greenroom.cli import ActorOpt, DbOpt, JsonOpt, cli, err, out, print_json
from greenroom.cli.connect import operations
from greenroom.cli.display import ago
from greenroom.cli.parse import parse_labels, parse_time, split_list
from greenroom.errors import InvalidInput

subscriptions_cli = typer.Typer(
    no_args_is_help=True, help="Subscribe webhooks, Slack and e-mail to events."
)
deliveries_cli = typer.Typer(
    no_args_is_help=True, help="See deliveries and their attempts; send events again."
)
cli.add_typer(subscriptions_cli, name="subscriptions")
cli.add_typer(deliveries_cli, name="deliveries")

IdArg = Annotated[str, typer.Argument(metavar="ID", help="Subscription id.")]
TypesOpt = Annotated[
    str | None,
    typer.Option("--types", help="Event types or prefixes, comma-separated: run.failed,pause.*"),
]
LabelOpt = Annotated[
    list[str] | None,
    typer.Option("--label", help="key=value the event's run must have (repeatable)."),
]
DescriptionOpt = Annotated[str | None, typer.Option(help="What it is for.")]
DigestOpt = Annotated[
    int | None, typer.Option(help="E-mail: one mail per this many minutes (0: one per event).")
]
InFlightOpt = Annotated[int | None, typer.Option(help="Deliveries sent to it at once.")]
RateOpt = Annotated[float | None, typer.Option(help="Deliveries per second (0: no limit).")]
SECRET_ONCE = "shown only this once: store it where the receiver verifies signatures"


def _spec(
    types: str | None,
    labels: list[str] | None,
    description: str | None,
    digest_minutes: int | None,
    max_in_flight: int | None,
    rate: float | None,
) -> dict[str, Any]:
    given = {
        "types": split_list(types),
        "labels": None if labels is None else parse_labels(labels),
        "description": description,
        "digest_minutes": digest_minutes,
        "max_in_flight": max_in_flight,
        "rate_per_second": rate,
    }
    return {k: v for k, v in given.items() if v is not None}


def _describe(s: SubscriptionOut) -> str:
    state = "enabled" if s.enabled else f"disabled ({s.disabled_reason or 'by an admin'})"
    return f"subscription {escape(s.id)} ({s.channel} to {escape(s.url)}, {state})"


@subscriptions_cli.command("list")
def subscriptions_list(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List subscriptions (never their secrets)."""
    with operations(ctx, db) as ops:
        found = ops.subscriptions(tenant=tenant)
    if json_out:
        print_json(found)
        return
    if not found:
        out.print("no subscriptions")
        return
    now = time.time()
    table = Table("ID", "TENANT", "CHANNEL", "URL", "TYPES", "STATE", "LAST SUCCESS")
    for s in found:
        state = "enabled" if s.enabled else "disabled"
        if s.failing_since is not None:
            state += f", failing since {ago(s.failing_since, now)}"
        table.add_row(
            escape(s.id),
            escape(s.tenant),
            s.channel,
            escape(s.url),
            escape(",".join(s.types)),
            escape(state),
            "-" if s.last_success_at is None else ago(s.last_success_at, now),
        )
    out.print(table)


@subscriptions_cli.command("create")
def subscriptions_create(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="An https URL, or for --channel email an address.")],
    types: TypesOpt = None,
    channel: Annotated[str, typer.Option(help="webhook, slack or email.")] = "webhook",
    labels: LabelOpt = None,
    description: DescriptionOpt = None,
    digest_minutes: DigestOpt = None,
    max_in_flight: InFlightOpt = None,
    rate: RateOpt = None,
    tenant: Annotated[
        str | None, typer.Option(help="The tenant that subscribes (with --url: the key's).")
    ] = None,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Subscribe an endpoint to events; a webhook's signing secret is printed once (stdout:
    the secret alone; stderr: what it is)."""
    if types is None:
        raise InvalidInput("--types is needed: which events (run.failed, run.*, *)?")
    wanted = {
        "url": url,
        "channel": channel,
        "tenant": tenant,
        **_spec(types, labels, description, digest_minutes, max_in_flight, rate),
    }
    with operations(ctx, db, actor=actor) as ops:
        created = ops.create_subscription(SubscriptionCreate.model_validate(wanted))
    if created.secret is None:
        out.print(f"created {_describe(created)}")
        return
    err.print(f"created {_describe(created)}; its signing secret is {SECRET_ONCE}:")
    out.print(created.secret, markup=False, highlight=False, soft_wrap=True)


@subscriptions_cli.command("show")
def subscriptions_show(
    ctx: typer.Context, subscription_id: IdArg, json_out: JsonOpt = False, db: DbOpt = None
) -> None:
    """Show a subscription (never its secret)."""
    with operations(ctx, db) as ops:
        found = ops.get_subscription(subscription_id)
    if json_out:
        print_json(found)
        return
    out.print(_describe(found))
    for field, value in found.model_dump().items():
        out.print(f"  {field}: {escape(str(value))}")


@subscriptions_cli.command("update")
def subscriptions_update(
    ctx: typer.Context,
    subscription_id: IdArg,
    url: Annotated[str | None, typer.Option(help="A new endpoint.")] = None,
    types: TypesOpt = None,
    labels: LabelOpt = None,
    description: DescriptionOpt = None,
    digest_minutes: DigestOpt = None,
    max_in_flight: InFlightOpt = None,
    rate: RateOpt = None,
    enable: Annotated[
        bool | None,
        typer.Option("--enable/--disable", help="Send to it again (or stop), e.g. after a fix."),
    ] = None,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Change what a subscription receives, where, or how fast; enable it again (what it
    missed meanwhile: greenroom deliveries recover)."""
    wanted = _spec(types, labels, description, digest_minutes, max_in_flight, rate)
    wanted.update({k: v for k, v in {"url": url, "enabled": enable}.items() if v is not None})
    if not wanted:
        raise InvalidInput("nothing to change: give --types, --url, --enable … (see --help)")
    with operations(ctx, db, actor=actor) as ops:
        done = ops.update_subscription(subscription_id, SubscriptionUpdate.model_validate(wanted))
    out.print(f"updated {_describe(done)}")


@subscriptions_cli.command("delete")
def subscriptions_delete(
    ctx: typer.Context, subscription_id: IdArg, actor: ActorOpt = None, db: DbOpt = None
) -> None:
    """Remove a subscription and the deliveries it still had to make."""
    with operations(ctx, db, actor=actor) as ops:
        ops.delete_subscription(subscription_id)
    out.print(f"subscription {escape(subscription_id)} deleted")


@subscriptions_cli.command("rotate-secret")
def subscriptions_rotate(
    ctx: typer.Context, subscription_id: IdArg, actor: ActorOpt = None, db: DbOpt = None
) -> None:
    """A new signing secret, printed once; for 24 hours messages are signed with both."""
    with operations(ctx, db, actor=actor) as ops:
        rotated = ops.rotate_subscription_secret(subscription_id)
    err.print(f"rotated the secret of {_describe(rotated)}; the new one is {SECRET_ONCE}:")
    out.print(rotated.secret or "", markup=False, highlight=False, soft_wrap=True)


@deliveries_cli.command("list")
def deliveries_list(
    ctx: typer.Context,
    failed: Annotated[
        bool, typer.Option("--failed", help="Only those whose last attempt failed.")
    ] = False,
    subscription: Annotated[str | None, typer.Option(help="One subscription's.")] = None,
    event: Annotated[int | None, typer.Option(help="One event's.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List deliveries, newest first."""
    with operations(ctx, db) as ops:
        pages = ops.iter_deliveries(
            page_size=min(limit, 500),
            subscription=subscription,
            event=event,
            failed=failed,
            tenant=tenant,
        )
        found = list(islice(pages, limit))
    if json_out:
        print_json(found)
        return
    if not found:
        out.print("no deliveries")
        return
    now = time.time()
    table = Table("ID", "EVENT", "SUBSCRIPTION", "STATE", "ATTEMPTS", "LAST", "NEXT")
    for d in found:
        last = "-" if d.last_status is None else str(d.last_status)
        if d.last_error:
            last = f"{last} {d.last_error}"
        waiting = d.state == "pending" and d.next_attempt_at > now
        table.add_row(
            str(d.id),
            str(d.event_id),
            escape(d.subscription_id),
            d.state,
            str(d.attempts),
            escape(last[:80]),
            f"in {d.next_attempt_at - now:.0f}s" if waiting else "-",
        )
    out.print(table)


@deliveries_cli.command("attempts")
def deliveries_attempts(
    ctx: typer.Context,
    delivery_id: Annotated[int, typer.Argument(metavar="ID", help="Delivery id.")],
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """A delivery's attempts: when, status, latency, the answer's start or the error."""
    with operations(ctx, db) as ops:
        found = ops.delivery_attempts(delivery_id)
    if json_out:
        print_json(found)
        return
    now = time.time()
    table = Table("#", "AT", "OUTCOME", "STATUS", "LATENCY", "ANSWER OR ERROR")
    for a in found:
        table.add_row(
            str(a.attempt),
            ago(a.at, now),
            a.outcome,
            "-" if a.status is None else str(a.status),
            f"{a.latency_ms:.0f} ms",
            escape((a.error or a.response)[:100]),
        )
    out.print(table if found else "no attempts (or pruned)")


@deliveries_cli.command("replay")
def deliveries_replay(
    ctx: typer.Context,
    event_id: Annotated[int, typer.Argument(metavar="EVENT_ID", help="The event to send again.")],
    endpoint: Annotated[
        str | None, typer.Option(help="Only to this subscription (default: every one).")
    ] = None,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Send an event again, with the same webhook-id (receivers may drop what they saw)."""
    with operations(ctx, db, actor=actor) as ops:
        made = ops.replay_event(event_id, subscription=endpoint)
    out.print(f"event {event_id} will be sent again to {len(made)} subscription(s)")


@deliveries_cli.command("recover")
def deliveries_recover(
    ctx: typer.Context,
    since: Annotated[str, typer.Option(help="Events since: a duration ago (12h) or ISO time.")],
    endpoint: Annotated[str | None, typer.Option(help="Only this subscription.")] = None,
    tenant: Annotated[
        str | None, typer.Option(help="Whose subscriptions (with --url: the key's).")
    ] = None,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Send again what subscriptions did not receive of the events since --since: failed
    deliveries, and events while a subscription was disabled."""
    moment = parse_time(since, "--since", time.time())
    request = RecoverIn(since=moment, subscription=endpoint, tenant=tenant)
    with operations(ctx, db, actor=actor) as ops:
        done = ops.recover_deliveries(request)
    out.print(f"{done.deliveries} deliveries will be sent again")
