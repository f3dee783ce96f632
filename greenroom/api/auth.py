"""Who is calling: the API key from `Authorization: Bearer …`, its tenant and role, and its
request rate. Every route declares the role it needs; a tenant key only ever sees its tenant.
Failed authentications are throttled per key id and per client address (api.throttle)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from greenroom.api.keys import matches, split_key
from greenroom.api.problems import ApiError
from greenroom.api.state import ApiState, get_state
from greenroom.model import ApiKey, Role


@dataclass(frozen=True)
class Caller:
    key_id: str
    #: None for a platform key, which acts on every tenant.
    tenant: str | None
    role: Role
    #: The requests per second this key may make (its own rate, else the node's default).
    rate: float = math.inf

    @property
    def actor(self) -> str:
        """How this caller appears in the audit log."""
        return f"key:{self.key_id}"

    @property
    def platform(self) -> bool:
        return self.tenant is None

    def granted_rate(self, asked: int | None, default: float) -> int | None:
        """The rate a key this caller creates may have. A tenant admin grants at most its own
        key's rate, which the platform set (or the node's `default`): the platform sets the
        ceiling of each tenant with the rate of the admin keys it gives it. None: the node's
        default rate."""
        if self.platform:
            return asked
        ceiling = max(1, math.floor(self.rate))
        if asked is None:
            return None if default <= self.rate else ceiling
        if asked > ceiling:
            raise ApiError(
                422,
                f"rate_limit may be at most {ceiling} requests per second (the rate of the key"
                " that grants it; a platform key may grant more)",
            )
        return asked

    def acting_for(self, tenant: str | None) -> str:
        """The tenant a create acts for: a tenant key's own; a platform key must name one."""
        if self.tenant is None:
            if not tenant:
                raise ApiError(422, "a platform key must name the tenant to act for")
            return tenant
        if tenant is not None and tenant != self.tenant:
            raise ApiError(403, f"this key acts for tenant {self.tenant!r} only")
        return self.tenant


class KeyCache:
    """Keys verified in the last `seconds`, so most requests skip the database lookup. A key
    revoked through this node is refused at once; through another node, within `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._verified: dict[str, tuple[ApiKey, float]] = {}
        #: Keys revoked here lately: a lookup that was in flight must not cache them again.
        self._forgotten: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, presented: str) -> ApiKey | None:
        with self._lock:
            found = self._verified.get(presented)
        if found is None or time.monotonic() - found[1] > self.seconds:
            return None
        return found[0]

    def put(self, presented: str, key: ApiKey) -> None:
        if self.seconds <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._forgotten.get(key.id, -math.inf) <= self.seconds:
                return
            if len(self._verified) > 10_000:  # many keys: start over rather than grow
                self._verified.clear()
            self._verified[presented] = (key, now)

    def forget(self, key_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            for presented in [p for p, (k, _) in self._verified.items() if k.id == key_id]:
                del self._verified[presented]
            self._forgotten = {
                k: at for k, at in self._forgotten.items() if now - at <= self.seconds
            }
            self._forgotten[key_id] = now


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, detail, headers={"WWW-Authenticate": 'Bearer realm="greenroom"'})


INVALID = "invalid API key"
UNUSABLE = "API key revoked or expired"


def _lookup(state: ApiState, presented: str, key_id: str | None) -> ApiKey | None:
    key = None if key_id is None else state.store.accounts.api_key(key_id)
    if key is None or not matches(key, presented):
        return None
    state.keys.put(presented, key)
    return key


#: The scheme, for the OpenAPI schema; a missing or malformed header is answered here (401).
BEARER = HTTPBearer(auto_error=False, description="an API key: `grk_<id>.<secret>`")


async def _authenticate(
    bearer: HTTPAuthorizationCredentials | None, state: ApiState, address: str | None
) -> ApiKey:
    """The caller's key: verified lately by this node (no lookup), else looked up, unless its
    key id or the caller's address failed too often lately (429) or it failed itself (401)."""
    if bearer is None:
        raise _unauthorized("send an API key: Authorization: Bearer <key>")
    presented = bearer.credentials
    key = state.keys.get(presented)
    key_id = split_key(presented)
    if key is None:
        wait = state.failures.wait(key_id, address)
        if wait > 0:
            raise ApiError(
                429,
                "too many failed authentications for this key or from this address",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        why = state.failures.known(presented)
        if why is None:
            key = await run_in_threadpool(_lookup, state, presented, key_id)
        if key is None:
            why = why or INVALID
            state.failures.failed(presented, key_id, address, why)
            raise _unauthorized(why)
    if not key.usable(state.store.clock.now()):
        state.failures.failed(presented, key_id, address, UNUSABLE)
        raise _unauthorized(UNUSABLE)
    return key


def admitted(state: ApiState, key: ApiKey) -> Caller:
    """The caller a verified key makes, within the key's request rate (429 past it): for the
    API's requests and the console's pages alike."""
    wait = state.limiter.take(key.id, key.rate_limit)
    if wait > 0:
        raise ApiError(
            429,
            "request rate of this key exceeded",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    rate = state.limiter.rate if key.rate_limit is None else key.rate_limit
    return Caller(key_id=key.id, tenant=key.tenant, role=key.role, rate=rate)


async def verify_key(presented: str, state: ApiState, address: str | None) -> ApiKey:
    """A presented key, checked as a request's bearer key is (throttled, 401 or 429): the
    console's sign-in uses it."""
    bearer = HTTPAuthorizationCredentials(scheme="Bearer", credentials=presented)
    return await _authenticate(bearer, state, address)


def caller(needed: Role) -> Callable[..., Awaitable[Caller]]:
    """A dependency: the authenticated caller, if its role allows `needed` and its rate is
    not exceeded."""

    async def dependency(
        request: Request,
        state: ApiState = Depends(get_state),
        bearer: HTTPAuthorizationCredentials | None = Depends(BEARER),
    ) -> Caller:
        address = request.client.host if request.client else None
        key = await _authenticate(bearer, state, address)
        caller = admitted(state, key)
        if not key.role.allows(needed):
            raise ApiError(403, f"this key's role ({key.role}) may not do this (needs {needed})")
        return caller

    return dependency


Viewer = Depends(caller(Role.VIEWER))
Operator = Depends(caller(Role.OPERATOR))
Admin = Depends(caller(Role.ADMIN))
Platform = Depends(caller(Role.PLATFORM))
