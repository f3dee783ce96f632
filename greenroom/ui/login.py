"""/ui/login and /ui/logout: an API key in, a session cookie out (and back).

The sign-in form is itself CSRF-protected: its token is bound to a random nonce in a short-lived
cookie, so another site cannot sign a browser in with its own key."""

from __future__ import annotations

import re
import secrets
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from greenroom.api.auth import verify_key
from greenroom.api.database import DatabaseRoute
from greenroom.api.problems import ApiError
from greenroom.ui.access import SignInNeeded, checked_form, ui_state, visitor
from greenroom.ui.render import page
from greenroom.ui.session import (
    COOKIE,
    CSRF_FIELD,
    LIFETIME_SECONDS,
    LOGIN_COOKIE,
    LOGIN_SECONDS,
    PATH,
)

router = APIRouter(route_class=DatabaseRoute, include_in_schema=False)
#: Where sign-in may lead: a console path and its query, never another site ("//host", "\\").
_NEXT = re.compile(r"^/ui/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*$")


def back_to(path: str | None) -> str:
    """The console page to go to after sign-in: `path` if it is one, else the overview."""
    fine = path and len(path) <= 2000 and _NEXT.match(path) and "//" not in path
    if fine and path and not path.startswith(f"{PATH}/login"):
        return path
    return f"{PATH}/"


def login_url(request: Request) -> str:
    """The sign-in page, asked to come back to the page `request` wanted."""
    wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if back_to(wanted) == f"{PATH}/":
        return f"{PATH}/login"
    return f"{PATH}/login?next={quote(wanted, safe='')}"


def _set_cookie(request: Request, response: Response, name: str, value: str, age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=age,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _form(request: Request, after: str, error: str | None = None, status: int = 200) -> Response:
    """The sign-in form, with a fresh nonce cookie its CSRF token is bound to."""
    nonce = secrets.token_urlsafe(16)
    token = ui_state(request).signer.csrf("login:" + nonce)
    context = {"csrf": token, "error": error, "next": after}
    response = page(request, "login.html", context, status=status)
    _set_cookie(request, response, LOGIN_COOKIE, nonce, LOGIN_SECONDS)
    return response


@router.get("/login")
async def login_form(request: Request) -> Response:
    return _form(request, back_to(request.query_params.get("next")))


@router.post("/login")
async def login(request: Request) -> Response:
    """Verify the key as the API does (throttled, revoked and expired keys refused) and set
    the session cookie; the key itself is not kept."""
    ui = ui_state(request)
    form = await request.form()
    nonce = request.cookies.get(LOGIN_COOKIE)
    token = form.get(CSRF_FIELD)
    if not nonce or not ui.signer.csrf_ok(
        "login:" + nonce, token if isinstance(token, str) else None
    ):
        raise ApiError(403, "the sign-in form expired or came from elsewhere: reload it")
    wanted = form.get("next")
    after = back_to(wanted if isinstance(wanted, str) else None)
    presented = form.get("api_key")
    if not isinstance(presented, str) or not presented.strip():
        return _form(request, after, "enter an API key", status=422)
    address = request.client.host if request.client else None
    try:
        key = await verify_key(presented.strip(), ui.api, address)
    except ApiError as exc:
        if exc.status == 429:
            raise
        return _form(request, after, exc.detail, status=exc.status)
    response = RedirectResponse(after, status_code=303)
    session = ui.signer.issue(key, ui.api.store.clock.now())
    _set_cookie(request, response, COOKIE, session, LIFETIME_SECONDS)
    response.delete_cookie(LOGIN_COOKIE, path=PATH, httponly=True, samesite="strict")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Clear the session cookie (a CSRF token is needed while the session is valid)."""
    try:
        who = await visitor(request)
    except SignInNeeded:
        who = None
    if who is not None:
        await checked_form(request, who)
    response = RedirectResponse(f"{PATH}/login", status_code=303)
    response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")
    return response
