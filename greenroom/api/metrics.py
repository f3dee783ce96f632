"""The API's metrics: requests counted and timed by route template, and GET /metrics.

/metrics answers without an API key, as Prometheus scrapes (metrics_api=false turns it off):
it tells workflow and queue names, and tenant names only if metrics_tenant_label is on. Keep
API nodes' /metrics to the scraping network, or turn it off.
"""

from __future__ import annotations

import time

from fastapi import FastAPI
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from greenroom.app import App
from greenroom.metrics import API_LATENCY, API_REQUESTS
from greenroom.metrics.expose import exposition
from greenroom.metrics.store import StoreCollector

#: The route of a request no FastAPI route matched (a 404, the docs' static files): raw paths
#: would add a series each.
UNMATCHED = "unmatched"


class RequestMetrics:
    """Pure ASGI middleware: it sees the route the router matched (scope["route"])."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes every handler ends as a 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope["method"]
            API_REQUESTS.labels(method, route, str(status)).inc()
            API_LATENCY.labels(method, route).observe(time.perf_counter() - started)


def install(api: FastAPI, app: App) -> None:
    """Count requests; serve GET /metrics unless turned off."""
    api.add_middleware(RequestMetrics)
    if not app.settings.metrics_api:
        return
    store = StoreCollector(lambda: app.store, app.settings.metrics_scrape_timeout)

    async def metrics() -> Response:
        body = await run_in_threadpool(exposition, store)
        return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)

    # A FastAPI route, not a plain one: FastAPI tells only its own routes' templates.
    api.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
