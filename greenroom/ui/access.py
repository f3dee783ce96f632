"""Who is looking at a page: the session cookie's key, checked on every request as the API
checks a bearer key (exists, not revoked or expired, rate), its role and its CSRF token."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from greenroom.api.auth import Caller, admitted
from greenroom.api.problems import ApiError
from greenroom.api.state import ApiState
from greenroom.model import ApiKey, Role
from greenroom.ui.session import COOKIE, CSRF_FIELD, CSRF_HEADER, Session, Signer, fingerprint


class SignInNeeded(Exception):
    """No valid session: pages redirect to the sign-in page."""


@dataclass
class UiState:
    """What the console's routes share: the API's state and the session signer."""

    api: ApiState
    _signer: Signer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def signer(self) -> Signer:
        with self._lock:
            if self._signer is None:
                self._signer = Signer(self.api.keyring)
            return self._signer


@dataclass(frozen=True)
class Visitor:
    """A signed-in caller, its session and the CSRF token its pages carry."""

    caller: Caller
    session: Session
    csrf: str

    def may(self, role: Role) -> bool:
        return self.caller.role.allows(role)


def ui_state(request: Request) -> UiState:
    state: UiState = request.app.state.ui
    return state


def usable_key(state: ApiState, session: Session) -> ApiKey | None:
    key = state.store.accounts.api_key(session.key_id)
    if key is None or not key.usable(state.store.clock.now()):
        return None
    return key if fingerprint(key) == session.key_fingerprint else None


async def visitor(request: Request) -> Visitor:
    """The signed-in caller; SignInNeeded without a valid session or with a key that was
    revoked or expired since; 429 past the key's request rate, as in the API."""
    ui = ui_state(request)
    state = ui.api
    session = ui.signer.read(request.cookies.get(COOKIE), state.store.clock.now())
    if session is None:
        raise SignInNeeded
    key = await run_in_threadpool(usable_key, state, session)
    if key is None:
        raise SignInNeeded
    return Visitor(admitted(state, key), session, ui.signer.csrf(session.token))


async def checked_form(request: Request, who: Visitor) -> dict[str, str]:
    """A posted form's fields, once its CSRF token (field or htmx header) proved that the page
    posting it was rendered for this session; 403 otherwise."""
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    presented = fields.pop(CSRF_FIELD, None) or request.headers.get(CSRF_HEADER)
    if not ui_state(request).signer.csrf_ok(who.session.token, presented):
        raise ApiError(403, "the form's CSRF token is missing or wrong: reload the page")
    return fields


def require(who: Visitor, role: Role) -> None:
    """403 unless the key's role allows `role` (the API's rule for the same action)."""
    if not who.may(role):
        raise ApiError(403, f"this key's role ({who.caller.role}) may not do this (needs {role})")
