"""Which `Operations` a command acts through: the server that --url names, or the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from greenroom.cli import (
    configure,
    db_url,
    default_actor,
    existing_store,
    given_db,
    load_app,
    remote_client,
)

if TYPE_CHECKING:
    from greenroom.cli.operations import Operations


@contextmanager
def operations(
    ctx: typer.Context,
    db: str | None,
    *,
    actor: str | None = None,
    app: str | None = None,
    local_only: dict[str, object] | None = None,
) -> Iterator[Operations]:
    """The server of --url (or $GREENROOM_URL) through its API, else the database, acting as
    --actor; `app` (module:attribute) is the App a local operation needs, if any (the server
    has its own). Options that mean something on a database only (--actor, and `local_only` by
    flag) are refused with --url: the server acts as the key's owner."""
    # Imported here: the API's schemas it needs are no part of `greenroom worker`'s start-up.
    from greenroom.cli.operations import LocalOperations

    client = remote_client(ctx, db, {"--actor": actor, **(local_only or {})})
    if client is not None:
        with client:
            yield client
        return
    who = actor or default_actor()
    if app is None:
        url = db_url(ctx, db)
        with existing_store(url) as store:
            yield LocalOperations(store, who, url=url)
        return
    the_app = load_app(app)
    try:
        configure(the_app, db=given_db(ctx, db))
        yield LocalOperations(None, who, the_app)
    finally:
        the_app.close()
