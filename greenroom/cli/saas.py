"""`greenroom demo-saas`: serve the demo SaaS admin console in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from greenroom.cli import cli, out
from greenroom.errors import InvalidInput


@cli.command("demo-saas")
def demo_saas(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: any).")] = 8765,
    orgs: Annotated[int, typer.Option(min=1, max=1000, help="Organizations listed.")] = 3,
    users_per_org: Annotated[
        int | None, typer.Option(min=1, help="Users in every org (default: varies by org).")
    ] = None,
    latency_ms: Annotated[
        int, typer.Option(min=0, max=60000, help="Latency added to every page.")
    ] = 0,
    error_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Probability of an HTTP 500 per page.")
    ] = 0.0,
    session_minutes: Annotated[
        float, typer.Option(help="Sessions expire this long after login.")
    ] = 30.0,
    changed_layout: Annotated[
        bool, typer.Option("--changed-layout", help="Render users with renamed markup.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the HTTP 500s' random sequence.")] = 0,
    show_credentials: Annotated[
        bool, typer.Option("--show-credentials", help="Print each org's admin password.")
    ] = False,
    access_log: Annotated[bool, typer.Option(help="Log each request.")] = True,
) -> None:
    """Serve the demo SaaS admin console on 127.0.0.1 until Ctrl-C."""
    from greenroom.demo.saas import make_config, org_slugs
    from greenroom.demo.saas.server import HOST, bind, make_server

    if session_minutes <= 0:
        raise InvalidInput("--session-minutes must be positive")
    config = make_config(
        orgs=orgs,
        users_per_org=users_per_org,
        latency_ms=latency_ms,
        error_rate=error_rate,
        session_seconds=session_minutes * 60,
        changed_layout=changed_layout,
        seed=seed,
    )
    sock = bind(port)
    url = f"http://{HOST}:{sock.getsockname()[1]}"
    describe(url, org_slugs(orgs), config.secret, show_credentials)
    faults = config.faults
    out.print(
        f"faults: latency {faults.latency_ms} ms, HTTP 500 rate {faults.error_rate:.0%}, "
        f"sessions expire after {session_minutes:g} min, "
        f"layout {'changed' if faults.changed_layout else 'normal'}; change them at run time "
        f"with POST {url}/_admin/faults (JSON), see {url}/_admin/stats"
    )
    out.print("Ctrl-C stops the server.")
    try:
        make_server(config, access_log=access_log).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    out.print("demo SaaS stopped")


def describe(url: str, slugs: list[str], secret: str, show_credentials: bool) -> None:
    from greenroom.demo.saas import admin_credentials

    out.print(f"demo SaaS console at {url}")
    table = Table("org", "sign in at", "email", *(["password"] if show_credentials else []))
    for slug in slugs[:20]:
        creds = admin_credentials(slug, secret)
        row = [slug, f"{url}/orgs/{slug}/login", creds.email]
        table.add_row(*map(escape, row + ([creds.password] if show_credentials else [])))
    out.print(table)
    if len(slugs) > 20:
        out.print(f"… and {len(slugs) - 20} more (any slug of [a-z0-9-] is an organization)")
    if not show_credentials:
        out.print(
            "passwords: rerun with --show-credentials, or in Python: "
            "greenroom.demo.saas.admin_credentials('acme').password"
        )
