"""The console's app, mounted by the API app under /ui: its routes, static files, HTML error
pages and the headers every page carries."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from greenroom.api.problems import ApiError
from greenroom.api.state import ApiState
from greenroom.errors import ConfigError, Conflict, GreenroomError, InvalidInput, NotFound
from greenroom.rules import error_message
from greenroom.ui import (
    actions,
    deliveries,
    licenses,
    live,
    login,
    pages,
    reports,
    schedules,
    tenant,
)
from greenroom.ui.access import SignInNeeded, UiState
from greenroom.ui.login import login_url
from greenroom.ui.render import page
from greenroom.ui.session import PATH

log = logging.getLogger("greenroom.ui")
STATIC = Path(__file__).parent / "static"
#: No inline script or style, nothing from elsewhere, no framing: an injected tag does nothing.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_STATUS: dict[type[GreenroomError], int] = {NotFound: 404, Conflict: 409, InvalidInput: 422}


class MountedRoute:
    """A console route as the API's request metrics name it: with its /ui prefix."""

    def __init__(self, path: str) -> None:
        self.path = path


class RouteLabel:
    """Pure ASGI middleware: the API's metrics label requests by the route matched, and this
    app's routes do not know they are mounted; prefix them so /ui/login is not "/login"."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            path = getattr(scope.get("route"), "path", None)
            if path:
                scope["route"] = MountedRoute(PATH + path)


def create_ui(state: ApiState) -> FastAPI:
    """The console over the API's state (store, keys, limits)."""
    ui = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    ui.state.greenroom = state  # for DatabaseRoute, as in the API
    ui.state.ui = UiState(api=state)
    ui.mount("/static", StaticFiles(directory=STATIC), name="static")
    for module in (login, pages, actions, schedules, deliveries, licenses, live, reports):
        ui.include_router(module.router)
    _install_errors(ui)
    ui.add_middleware(RouteLabel)

    @ui.middleware("http")
    async def headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        tenant.remember(request, response)
        response.headers.setdefault("Content-Security-Policy", POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if not request.url.path.startswith(f"{PATH}/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return ui


def _error_page(request: Request, status: int, detail: str) -> Response:
    return page(
        request,
        "error.html",
        {"status": status, "title": HTTPStatus(status).phrase, "detail": detail},
        status=status,
    )


def _install_errors(ui: FastAPI) -> None:
    """Errors as pages (the API's are problem+json); the same statuses as the API's."""

    @ui.exception_handler(SignInNeeded)
    async def sign_in(request: Request, exc: SignInNeeded) -> Response:
        if request.method not in ("GET", "HEAD"):
            return _error_page(request, 403, "sign in first")
        if "hx-request" in request.headers:  # htmx follows this with a full page load
            return Response(status_code=204, headers={"HX-Redirect": f"{PATH}/login"})
        return RedirectResponse(login_url(request), status_code=303)

    @ui.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        response = _error_page(request, exc.status, exc.detail)
        response.headers.update(exc.headers or {})
        return response

    @ui.exception_handler(GreenroomError)
    async def greenroom_error(request: Request, exc: GreenroomError) -> Response:
        for kind, status in _STATUS.items():
            if isinstance(exc, kind):
                return _error_page(request, status, str(exc))
        if isinstance(exc, ConfigError):
            log.error("configuration error serving %s: %s", request.url.path, exc)
            return _error_page(request, 503, "the server is misconfigured; see its log")
        return _error_page(request, 400, str(exc))

    @ui.exception_handler(RequestValidationError)
    @ui.exception_handler(ValidationError)
    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError | ValidationError)
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {error_message(e)}" for e in exc.errors()
        )
        return _error_page(request, 422, f"invalid request: {fields}")

    @ui.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else ""
        return _error_page(request, exc.status_code, detail)

    @ui.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return _error_page(request, 500, "internal error; it has been logged")
