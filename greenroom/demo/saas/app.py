"""The console as a FastAPI app: login, paginated users, admin actions, and test hooks.

Pages under /orgs/{org}/ need the org's session cookie; without a live one they redirect (303)
to the org's login page with ?next=, which is how a connector notices an expired session.
Hooks under /_admin/ are for tests and the demo driver (no auth: the server binds 127.0.0.1):
GET /_admin/stats, POST /_admin/stats/reset, GET|POST /_admin/faults,
POST /_admin/sessions/expire, POST /_admin/reset, GET /_admin/health.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Body, FastAPI, Form, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from greenroom.demo.saas import pages
from greenroom.demo.saas.config import SaasConfig
from greenroom.demo.saas.data import (
    TIER_COST,
    Organization,
    User,
    org_slugs,
    organization,
    valid_slug,
)
from greenroom.demo.saas.state import DemoState, Session

COOKIE = "demo_session"
ADMIN_PREFIX = "/_admin/"

FormText = Annotated[str, Form()]


def create_app(config: SaasConfig | None = None) -> FastAPI:
    """A fresh console with its own in-memory state (available as app.state.demo)."""
    state = DemoState(config or SaasConfig())
    app = FastAPI(title="Greenroom demo SaaS", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.demo = state
    app.middleware("http")(_faults_middleware(state))
    _console_routes(app, state)
    _login_routes(app, state)
    _admin_routes(app, state)
    return app


Handler = Callable[[Request], Awaitable[Response]]


def _faults_middleware(state: DemoState) -> Callable[[Request, Handler], Awaitable[Response]]:
    async def apply_faults(request: Request, call_next: Handler) -> Response:
        path = request.url.path
        if path.startswith(ADMIN_PREFIX) or path == "/favicon.ico":
            return await call_next(request)
        faults = state.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if state.draw_error(_org_of(path)):
            return HTMLResponse(pages.error_page(500, "Internal Server Error"), status_code=500)
        return await call_next(request)

    return apply_faults


def _org_of(path: str) -> str | None:
    parts = path.split("/")
    if len(parts) > 2 and parts[1] == "orgs" and valid_slug(parts[2]):
        return parts[2]
    return None


def html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={"cache-control": "no-store"})


def not_found(message: str = "Not found") -> HTMLResponse:
    return html(pages.error_page(404, message), 404)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def org_or_none(state: DemoState, slug: str) -> Organization | None:
    if not valid_slug(slug):
        return None
    return organization(slug, state.config.users_per_org)


def signed_in(state: DemoState, request: Request, org: str) -> Session | RedirectResponse:
    """The request's live session for this org, else a redirect to the org's login page."""
    session = state.session(org, request.cookies.get(COOKIE))
    if session is not None:
        return session
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return see_other(f"/orgs/{org}/login?next={quote(target, safe='')}")


def safe_next(org: str, next_url: str) -> str:
    """Only a path inside the same org: never an open redirect."""
    if next_url.startswith(f"/orgs/{org}/") and "//" not in next_url and "\\" not in next_url:
        return next_url
    return f"/orgs/{org}/users"


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _console_routes(app: FastAPI, state: DemoState) -> None:
    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        orgs = [organization(s, state.config.users_per_org) for s in org_slugs(state.config.orgs)]
        return html(pages.index_page(orgs))

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/orgs/{org}")
    async def org_home(org: str) -> Response:
        return see_other(f"/orgs/{org}/users") if valid_slug(org) else not_found()

    @app.get("/orgs/{org}/users", response_class=HTMLResponse)
    async def users(request: Request, org: str, page: str = "1", q: str = "") -> Response:
        the_org = org_or_none(state, org)
        if the_org is None:
            return not_found("No such organization")
        session = signed_in(state, request, org)
        if isinstance(session, Response):
            return session
        state.page_view(org)
        shown, info = _search_page(state.users(org), q, page, state.config.page_size)
        notice, session.notice = session.notice, None
        return html(
            pages.users_page(
                the_org,
                shown,
                info,
                account=session.email,
                changed_layout=state.faults.changed_layout,
                notice=notice,
            )
        )

    @app.post("/orgs/{org}/users/{user_id}/deactivate")
    async def deactivate(
        request: Request, org: str, user_id: str, page: FormText = "1", q: FormText = ""
    ) -> Response:
        return _act(state, request, org, user_id, None, page, q)

    @app.post("/orgs/{org}/users/{user_id}/tier")
    async def change_tier(
        request: Request,
        org: str,
        user_id: str,
        tier: FormText = "",
        page: FormText = "1",
        q: FormText = "",
    ) -> Response:
        if tier not in TIER_COST:
            return html(pages.error_page(400, f"Unknown tier {tier!r}"), 400)
        return _act(state, request, org, user_id, tier, page, q)


def _search_page(people: list[User], q: str, page: str, size: int) -> tuple[list[User], pages.Page]:
    """The users a search (`q`, in emails and names) and page number show, and where that page
    is: a page number out of range shows the nearest page, as consoles do."""
    query = q.strip().lower()
    if query:
        people = [u for u in people if query in u.email.lower() or query in u.name.lower()]
    count = max(1, math.ceil(len(people) / size))
    number = min(max(1, _int(page, 1)), count)
    info = pages.Page(number=number, pages=count, total=len(people), query=q.strip())
    return people[(number - 1) * size : number * size], info


def _act(
    state: DemoState,
    request: Request,
    org: str,
    user_id: str,
    tier: str | None,
    page: str,
    q: str,
) -> Response:
    """Deactivate (tier None) or change the tier of a user, then show the same page again."""
    the_org = org_or_none(state, org)
    if the_org is None:
        return not_found("No such organization")
    session = signed_in(state, request, org)
    if isinstance(session, Response):
        return session
    user = state.user(org, user_id)
    if user is None:
        return not_found("No such user")
    if tier is None:
        if user.email == session.email:
            return html(pages.error_page(400, "You cannot deactivate your own account"), 400)
        state.deactivate(org, user_id)
        session.notice = f"Deactivated {user.email}"
    else:
        state.set_tier(org, user_id, tier)
        session.notice = f"Changed {user.email} to {tier}"
    return see_other(pages.page_href(the_org, max(1, _int(page, 1)), q))


def _login_routes(app: FastAPI, state: DemoState) -> None:
    @app.get("/orgs/{org}/login", response_class=HTMLResponse)
    async def login_form(request: Request, org: str, next: str = "") -> Response:
        the_org = org_or_none(state, org)
        if the_org is None:
            return not_found("No such organization")
        if state.session(org, request.cookies.get(COOKIE)) is not None:
            return see_other(safe_next(org, next))
        return html(pages.login_page(the_org, next_url=next))

    @app.post("/orgs/{org}/login")
    async def login(
        org: str, email: FormText = "", password: FormText = "", next: FormText = ""
    ) -> Response:
        the_org = org_or_none(state, org)
        if the_org is None:
            return not_found("No such organization")
        session = state.login(org, email, password)
        if session is None:
            page = pages.login_page(
                the_org, error="Invalid email or password", email=email, next_url=next
            )
            return html(page, 401)
        response = see_other(safe_next(org, next))
        response.set_cookie(
            COOKIE,
            session.token,
            max_age=math.ceil(state.faults.session_seconds),
            path=f"/orgs/{org}",
            httponly=True,
            samesite="lax",
        )
        return response

    @app.post("/orgs/{org}/logout")
    async def logout(request: Request, org: str) -> Response:
        if not valid_slug(org):
            return not_found()
        state.logout(request.cookies.get(COOKIE))
        response = see_other(f"/orgs/{org}/login")
        response.delete_cookie(COOKIE, path=f"/orgs/{org}")
        return response


def _admin_routes(app: FastAPI, state: DemoState) -> None:
    @app.get("/_admin/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/_admin/stats")
    async def stats() -> dict[str, dict[str, int]]:
        return state.stats()

    @app.post("/_admin/stats/reset")
    async def reset_stats() -> dict[str, dict[str, int]]:
        state.reset_counters()
        return state.stats()

    @app.get("/_admin/faults")
    async def faults() -> dict[str, Any]:
        return state.faults.as_dict()

    @app.post("/_admin/faults")
    async def set_faults(changes: Annotated[dict[str, Any], Body()]) -> Response:
        try:
            updated = state.update_faults(changes)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse(updated.as_dict())

    @app.post("/_admin/sessions/expire")
    async def expire(org: str | None = None) -> dict[str, int]:
        return {"expired": state.expire_sessions(org)}

    @app.post("/_admin/reset")
    async def reset() -> dict[str, Any]:
        state.reset()
        return {"faults": state.faults.as_dict(), "stats": state.stats()}
