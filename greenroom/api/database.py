"""Requests that meet trouble in the database answer 503 with Retry-After or succeed, never a
bare 500.

A dropped connection (a restart, a failover, a terminated backend) is noticed when a request
uses it; the pool then tests its idle connections, so trying again takes a fresh one. A request
is tried again once where that is safe: reads, and writes whose repetition changes nothing
(PUT, DELETE, or one with an Idempotency-Key); others answer 503, as does a second failure. A
request that failed on runs stored before the text rules held (storage.repair) quarantines them
and is treated the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from greenroom.api.problems import ApiError
from greenroom.api.state import ApiState, get_state

log = logging.getLogger("greenroom.api")

RETRY_AFTER_SECONDS = 1
#: Methods whose repetition changes nothing more than doing them once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def repeatable(request: Request) -> bool:
    return request.method in IDEMPOTENT_METHODS or "idempotency-key" in request.headers


def unavailable(detail: str) -> ApiError:
    return ApiError(503, detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


class DatabaseRoute(APIRoute):
    """A route whose requests survive a database blip (see the module's docstring)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                state = await get_state(request)
                if not await run_in_threadpool(_recovered, state, exc):
                    raise
                if not repeatable(request):
                    raise unavailable(
                        "the database was unavailable; this request may not have been applied:"
                        " retry it (with an Idempotency-Key, where there is one, to be safe)"
                    ) from exc
                log.warning(
                    "%s %s met a database error, trying once more: %s",
                    request.method,
                    request.url.path,
                    _describe(exc),
                )
            try:
                return await handler(request)
            except Exception as exc:
                if _database_trouble(await get_state(request), exc):
                    raise unavailable("the database is unavailable; retry later") from exc
                raise

        return handle


def _database_trouble(state: ApiState, exc: BaseException) -> bool:
    backend = state.store.backend
    return backend.is_transient(exc) or backend.is_data_error(exc)


def _recovered(state: ApiState, exc: BaseException) -> bool:
    """Whether trying again may now succeed: after a lost connection (the pool has tested its
    idle ones), or once the runs a data error came from are quarantined."""
    backend = state.store.backend
    if backend.is_transient(exc):
        return True
    if not backend.is_data_error(exc):
        return False
    try:
        found = state.store.repair.quarantine_unreadable()
    except Exception as repair_exc:
        log.error("could not quarantine unreadable runs: %s", _describe(repair_exc))
        return False
    for q in found:
        log.error("run %s (tenant %s) quarantined: %s", q.run_id, q.tenant, q.reason)
    return bool(found)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
