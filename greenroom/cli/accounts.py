"""Tenants, keys and integrations: `tenants create`, `keys create|list|revoke`,
`integrations list|show|update` (on a database to bootstrap, or through the API with --url),
and `secrets reseal` (on the database only).

Integrations are created through the API only, so that credentials never pass through a
shell's history; their settings (not secret) can be changed here too.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from greenroom.api.schemas import IntegrationOut, IntegrationUpdate, KeyCreate, KeyOut
from greenroom.cli import (
    ActorOpt,
    DbOpt,
    JsonOpt,
    cli,
    db_url,
    err,
    existing_store,
    hint,
    out,
    print_json,
)
from greenroom.cli.connect import operations
from greenroom.cli.controls import tenants_cli
from greenroom.cli.display import ago, short_json, when
from greenroom.cli.operations import LocalOperations, Operations
from greenroom.cli.parse import parse_duration, parse_input
from greenroom.crypto import load_keyring
from greenroom.errors import InvalidInput, NotFound
from greenroom.integrations import reseal_all
from greenroom.model import Role
from greenroom.settings import load_settings

keys_cli = typer.Typer(no_args_is_help=True, help="API keys: create (shown once), list, revoke.")
integrations_cli = typer.Typer(
    no_args_is_help=True,
    help="Integrations: list, show, update settings (create them through the API: credentials stay "
    "out of shell history).",
)
secrets_cli = typer.Typer(no_args_is_help=True, help="The keys that encrypt stored credentials.")
cli.add_typer(keys_cli, name="keys")
cli.add_typer(integrations_cli, name="integrations")
cli.add_typer(secrets_cli, name="secrets")

TenantOpt = Annotated[str | None, typer.Option(help="Only this tenant's.")]


@tenants_cli.command("create")
def tenants_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Tenant name.")],
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Register a tenant, so that it can have API keys and integrations."""
    with operations(ctx, db, actor=actor) as ops:
        tenant_name = ops.create_tenant(name).name
    out.print(
        f"tenant {escape(tenant_name)} registered; an admin key for it: "
        + escape(hint(ctx, "keys", "create", "--tenant", tenant_name, "--role", "admin")),
        soft_wrap=True,
    )


def describe_key(key: KeyOut) -> str:
    owner = "every tenant" if key.tenant is None else f"tenant {key.tenant}"
    expiry = "never expires" if key.expires_at is None else f"expires {when(key.expires_at)}"
    name = "" if key.name == key.role.value else f" ({key.name})"
    return escape(f"{key.role.value} key {key.id}{name} for {owner}, {expiry}")


ONCE = "shown only this once: greenroom keeps only its hash"


@keys_cli.command("create")
def keys_create(
    ctx: typer.Context,
    role: Annotated[Role, typer.Option(help="What the key may do.", show_default=False)],
    tenant: Annotated[
        str | None,
        typer.Option(
            help="The tenant it acts for (every role but platform; with --url: the key's)."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="What it is for (default: its role).")] = None,
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime, like 90d or 12h (default: no expiry).")
    ] = None,
    rate_limit: Annotated[
        int | None,
        typer.Option(min=1, help="Requests per second (default: the api_rate_limit setting)."),
    ] = None,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Create an API key and print its secret, once (stdout: the secret alone; stderr: what
    it is), e.g. KEY=$(greenroom keys create --tenant acme --role admin)."""
    if role is Role.PLATFORM and tenant is not None:
        raise InvalidInput("a platform key acts for every tenant: drop --tenant")
    lifetime = None if expires_in is None else parse_duration(expires_in, "--expires-in")
    if lifetime is not None and lifetime <= 0:
        raise InvalidInput("--expires-in must be longer than 0")
    wanted: dict[str, Any] = {"name": name or role.value, "role": role, "tenant": tenant}
    if lifetime is not None:
        wanted["expires_at"] = time.time() + lifetime
    if rate_limit is not None:
        wanted["rate_limit"] = rate_limit
    with operations(ctx, db, actor=actor) as ops:
        key = ops.create_api_key(KeyCreate.model_validate(wanted))
    err.print(f"created {describe_key(key)}; its secret is {ONCE}:")
    out.print(key.key, markup=False, highlight=False, soft_wrap=True)


@keys_cli.command("list")
def keys_list(
    ctx: typer.Context, tenant: TenantOpt = None, json_out: JsonOpt = False, db: DbOpt = None
) -> None:
    """List API keys (never their secrets): id, tenant, role, name, state, age and expiry."""
    with operations(ctx, db) as ops:
        found = ops.api_keys(tenant=tenant)
    now = time.time()
    if json_out:
        print_json(found)
        return
    if not found:
        out.print("no API keys")
        return
    table = Table("ID", "TENANT", "ROLE", "NAME", "STATE", "CREATED", "EXPIRES", "RATE LIMIT")
    for k in found:
        table.add_row(
            escape(k.id),
            "(platform)" if k.tenant is None else escape(k.tenant),
            k.role.value,
            escape(k.name),
            key_state(k, now),
            ago(k.created_at, now),
            when(k.expires_at),
            "-" if k.rate_limit is None else f"{k.rate_limit}/s",
        )
    out.print(table)


def key_state(key: KeyOut, now: float) -> str:
    if key.revoked_at is not None:
        return "[red]revoked[/]"
    return (
        "[green]active[/]" if key.expires_at is None or now < key.expires_at else "[red]expired[/]"
    )


@keys_cli.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(metavar="ID", help="Key id (grk_…).")],
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Revoke an API key: API servers refuse it within api_key_cache_seconds."""
    before = time.time()
    with operations(ctx, db, actor=actor) as ops:
        key = ops.revoke_api_key(key_id)
    if key.revoked_at is not None and key.revoked_at < before:
        out.print(f"{describe_key(key)} was already revoked")
        return
    out.print(f"revoked {describe_key(key)}")


@integrations_cli.command("list")
def integrations_list(
    ctx: typer.Context, tenant: TenantOpt = None, json_out: JsonOpt = False, db: DbOpt = None
) -> None:
    """List integrations (never their credentials), with the key that seals each (on a
    database: the API does not say)."""
    with operations(ctx, db) as ops:
        found = ops.integrations(tenant=tenant)
        sealed = sealed_with(ops, tenant)
    now = time.time()
    if json_out:
        print_json(found)
        return
    if not found:
        out.print("no integrations")
        return
    table = Table(
        "ID", "TENANT", "CONNECTOR", "NAME", "STATUS", "SETTINGS", "SEALED WITH", "CREDENTIALS SET"
    )
    for i in found:
        table.add_row(
            escape(i.id),
            escape(i.tenant),
            escape(i.connector),
            escape(i.name),
            i.status,
            short_json(i.settings),
            escape(sealed.get(i.id, "-")),
            ago(i.credentials_updated_at, now),
        )
    out.print(table)


@integrations_cli.command("show")
def integrations_show(
    ctx: typer.Context,
    integration_id: Annotated[str, typer.Argument(metavar="ID", help="Integration id (int_…).")],
    tenant: Annotated[str | None, typer.Option(help="The tenant it must belong to.")] = None,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Show an integration (never its credentials): its settings whole, status and times."""
    with operations(ctx, db) as ops:
        found = tenants_integration(ops, integration_id, tenant)
        sealed = sealed_with(ops, found.tenant).get(found.id)
    if json_out:
        print_json(found)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")  # whole values, folded, never cut
    rows = [
        ("integration", found.id),
        ("tenant", found.tenant),
        ("connector", found.connector),
        ("name", found.name),
        ("status", found.status),
        ("settings", json.dumps(found.settings, indent=2, ensure_ascii=False)),
        ("credentials set", when(found.credentials_updated_at)),
        ("created", when(found.created_at)),
        ("updated", when(found.updated_at)),
    ]
    if sealed is not None:
        rows.append(("sealed with", sealed))
    for name, value in rows:
        grid.add_row(name, escape(value))
    out.print(grid)


@integrations_cli.command("update")
def integrations_update(
    ctx: typer.Context,
    integration_id: Annotated[str, typer.Argument(metavar="ID", help="Integration id (int_…).")],
    settings: Annotated[
        str | None,
        typer.Option(help="All its settings, as a JSON object (checked by the connector)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    status: Annotated[
        str | None, typer.Option(help="active, or disabled (new runs for it are refused).")
    ] = None,
    app: Annotated[
        str | None,
        typer.Option("--app", help="Your App (module:attribute), whose connector checks settings."),
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="The tenant it must belong to.")] = None,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Change an integration's settings (replaced whole, validated, audited), name or status;
    with --url, through the API as an admin key."""
    new_settings = None if settings is None else parse_input(settings, "--settings")
    if new_settings is None and name is None and status is None:
        raise InvalidInput("nothing to change: give --settings, --name or --status")
    update = IntegrationUpdate.model_validate(
        {"settings": new_settings, "name": name, "status": status}
    )
    with operations(ctx, db, actor=actor, app=app, local_only={"--app": app}) as ops:
        tenants_integration(ops, integration_id, tenant)
        done = ops.update_integration(integration_id, update)
    out.print(f"integration {escape(done.id)} updated: settings {short_json(done.settings)}")


def sealed_with(ops: Operations, tenant: str | None) -> dict[str, str]:
    """The key that seals each integration's credentials, by id: on a database only (the API
    does not say), for `secrets reseal` after a key rotation."""
    if not isinstance(ops, LocalOperations):
        return {}
    return {i.id: i.key_id for i in ops.store.accounts.integrations(tenant=tenant)}


def tenants_integration(ops: Operations, integration_id: str, tenant: str | None) -> IntegrationOut:
    """An integration, which must be `tenant`'s if one is given: one of another tenant is not
    there for who names the tenant."""
    found = ops.get_integration(integration_id)
    if tenant is not None and found.tenant != tenant:
        raise NotFound(f"integration {integration_id} not found")
    return found


@secrets_cli.command("reseal")
def secrets_reseal(ctx: typer.Context, db: DbOpt = None) -> None:
    """Re-encrypt every integration's credentials under the current GREENROOM_SECRET_KEY.

    After a key rotation: keep the old key in GREENROOM_PREVIOUS_SECRET_KEYS until this has
    run, then drop it. Saved browser sessions are not resealed: each is saved again under the
    new key by its session's next run, and one still under a dropped key means a new login."""
    url = db_url(ctx, db)
    with existing_store(url) as store:
        ring = load_keyring(load_settings(db=url))
        total = len(store.accounts.integrations())
        resealed = reseal_all(store.accounts, ring)
    out.print(
        f"resealed {resealed} of {total} integrations under key {ring.current_id} "
        "(the others already were)"
    )
