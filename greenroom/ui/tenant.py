"""A platform key's choice of tenant, remembered across pages for its session: `?tenant=` on a
page chooses (blank: every tenant), and pages without it show the tenant chosen last. The
choice is a cookie bound to the session by an HMAC, so another session (another key, a tenant
key signing in on the same browser) never inherits it; tenant keys are scoped by their key."""

from __future__ import annotations

from fastapi import Request, Response
from pydantic import TypeAdapter

from greenroom.rules import Name
from greenroom.ui.access import Visitor, ui_state
from greenroom.ui.session import PATH

COOKIE = "greenroom_tenant"
TENANT = TypeAdapter(Name | None)


def _seal(request: Request, who: Visitor, tenant: str) -> str:
    return ui_state(request).signer.csrf(f"tenant:{who.session.token}:{tenant}")


def tenant_of(request: Request, who: Visitor) -> str | None:
    """The tenant a page shows: `?tenant=` if given (remembered, for a platform key), else a
    platform key's last choice, else every tenant (or, for a tenant key, its own)."""
    if "tenant" in request.query_params:
        chosen = TENANT.validate_python(request.query_params["tenant"] or None)
        if who.caller.platform:
            request.state.tenant_cookie = (
                "" if chosen is None else f"{chosen}.{_seal(request, who, chosen)}"
            )
        return chosen
    return remembered(request, who)


def remembered(request: Request, who: Visitor) -> str | None:
    """A platform key's last choice in this session, if any."""
    tenant, _, seal = request.cookies.get(COOKIE, "").rpartition(".")
    if not who.caller.platform or not tenant:
        return None
    if not ui_state(request).signer.csrf_ok(f"tenant:{who.session.token}:{tenant}", seal):
        return None
    return tenant


def remember(request: Request, response: Response) -> None:
    """Keep (or forget) the choice a page made, with the session cookie's flags."""
    value = getattr(request.state, "tenant_cookie", None)
    if value is None:
        return
    if not value:
        response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")
        return
    response.set_cookie(
        COOKIE,
        value,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
