"""The API app factory: everything the API needs hangs off the FastAPI app it returns."""

from __future__ import annotations

from importlib.metadata import version

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from greenroom.api import metrics, openapi, problems
from greenroom.api.auth import KeyCache
from greenroom.api.limits import BodyLimit
from greenroom.api.routes import (
    accounts,
    controls,
    events,
    health,
    integrations,
    licenses,
    observe,
    reports,
    runs,
    schedules,
    subscriptions,
)
from greenroom.api.state import ApiState
from greenroom.api.throttle import FailedAuth, RateLimiter
from greenroom.app import App
from greenroom.ui.app import create_ui

DESCRIPTION = """\
Drive greenroom: start runs of your workflows for your integrations, follow and retry them,
pause and resume work. Authenticate with `Authorization: Bearer <API key>`. A tenant's key
sees only its tenant: another tenant's ids answer 404. Errors are problem+json (RFC 9457).
"""


def create_api(app: App) -> FastAPI:
    """An API over `app`'s workflows, connectors and store."""
    settings = app.settings
    # /docs and /redoc with their scripts served from the package, not a CDN: they work offline.
    api = FastAPIOffline(
        title="greenroom",
        version=version("greenroom"),
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "runs", "description": "Start, follow, cancel and retry runs."},
            {"name": "queues and pauses", "description": "Queue settings, pause and resume."},
            {"name": "integrations", "description": "Connectors and each tenant's integrations."},
            {"name": "schedules", "description": "Runs at cron or interval slots."},
            {"name": "events", "description": "What happened, in commit order (docs/events.md)."},
            {"name": "licenses", "description": "Unused licenses and their findings."},
        ],
        # A span per request, a child of the caller's traceparent (greenroom.tracing): the runs
        # it creates store it. Metrics are Prometheus's (greenroom.metrics); logs are
        # greenroom's, redacted (FastAPI's would carry exception messages as they are).
        telemetry={"metrics": False, "logs": False, "operation_spans": False},
    )
    api.state.greenroom = ApiState(
        app=app,
        limiter=RateLimiter(settings.api_rate_limit, settings.api_rate_burst),
        keys=KeyCache(settings.api_key_cache_seconds),
        failures=FailedAuth(settings.api_auth_failure_rate, settings.api_auth_failure_burst),
    )
    problems.install(api)
    openapi.install(api, app)
    api.include_router(health.router)
    for module in (
        runs,
        controls,
        schedules,
        integrations,
        events,
        subscriptions,
        observe,
        accounts,
        licenses,
        reports,
    ):
        api.include_router(module.router, responses=problems.COMMON)
    api.mount("/ui", create_ui(api.state.greenroom))
    api.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    metrics.install(api, app)  # outermost: it times and counts what the others answer too
    return api
