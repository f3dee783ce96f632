"""The console's in-memory state: sessions, admin changes to users, counters and faults.

State lives in one server process and is lost when it stops, like a test double of a real SaaS.
A lock guards it because tests and the demo may read it from other threads.
"""

from __future__ import annotations

import hmac
import random
import secrets
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from greenroom.demo.saas.config import Faults, SaasConfig
from greenroom.demo.saas.data import DATA_DATE, TIER_COST, User, admin_credentials, organization


@dataclass
class Session:
    token: str
    org: str
    email: str
    started: float
    notice: str | None = None


@dataclass
class Counters:
    logins: int = 0
    failed_logins: int = 0
    page_views: int = 0
    errors: int = 0
    actions: int = 0


@dataclass
class Change:
    active: bool | None = None
    tier: str | None = None


class DemoState:
    def __init__(self, config: SaasConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.sessions: dict[str, Session] = {}
        self.changes: dict[str, dict[str, Change]] = defaultdict(dict)
        self.counters: dict[str, Counters] = defaultdict(Counters)
        self.faults = config.faults
        self._errors = random.Random(config.faults.seed)

    # -- faults --------------------------------------------------------------------------

    def set_faults(self, faults: Faults, *, restart: bool = False) -> Faults:
        """Install faults; a changed seed (or restart) starts the 500s' sequence over."""
        with self.lock:
            self._sweep()  # expired stays expired when session_seconds grows
            if restart or faults.seed != self.faults.seed:
                self._errors = random.Random(faults.seed)
            self.faults = faults
            return faults

    def update_faults(self, changes: dict[str, Any]) -> Faults:
        return self.set_faults(self.faults.updated(changes))

    def draw_error(self, org: str | None) -> bool:
        """Whether this request fails with a 500, the next draw of the seeded sequence."""
        with self.lock:
            rate = self.faults.error_rate
            failed = rate > 0 and self._errors.random() < rate
            if failed and org is not None:
                self.counters[org].errors += 1
            return failed

    # -- sessions ------------------------------------------------------------------------

    def login(self, org: str, email: str, password: str) -> Session | None:
        expected = admin_credentials(org, self.config.secret)
        ok = hmac.compare_digest(email.strip().lower(), expected.email) & hmac.compare_digest(
            password.encode(), expected.password.encode()
        )
        with self.lock:
            if not ok:
                self.counters[org].failed_logins += 1
                return None
            self.counters[org].logins += 1
            self._sweep()
            session = Session(
                token=secrets.token_urlsafe(32), org=org, email=expected.email, started=_now()
            )
            self.sessions[session.token] = session
            return session

    def session(self, org: str, token: str | None) -> Session | None:
        """The live session of this org behind the token; expired ones are dropped."""
        if not token:
            return None
        with self.lock:
            found = self.sessions.get(token)
            if found is None or found.org != org:
                return None
            if _now() - found.started >= self.faults.session_seconds:
                del self.sessions[token]
                return None
            return found

    def _sweep(self) -> None:
        """Drop expired sessions (the caller holds the lock)."""
        now = _now()
        limit = self.faults.session_seconds
        for token in [t for t, s in self.sessions.items() if now - s.started >= limit]:
            del self.sessions[token]

    def logout(self, token: str | None) -> None:
        with self.lock:
            self.sessions.pop(token or "", None)

    def expire_sessions(self, org: str | None = None) -> int:
        """End every live session (of one org): the next page view redirects to login."""
        with self.lock:
            self._sweep()
            doomed = [t for t, s in self.sessions.items() if org is None or s.org == org]
            for token in doomed:
                del self.sessions[token]
            return len(doomed)

    def page_view(self, org: str) -> None:
        with self.lock:
            self.counters[org].page_views += 1

    # -- users ---------------------------------------------------------------------------

    def users(self, org: str) -> list[User]:
        """The org's users with admin actions applied, in their stable order."""
        base = organization(org, self.config.users_per_org).users
        shift = self.config.data_date - DATA_DATE
        if shift:
            base = tuple(
                u if u.last_login is None else replace(u, last_login=u.last_login + shift)
                for u in base
            )
        with self.lock:
            changes = dict(self.changes.get(org, {}))
        return [_apply(user, changes.get(user.id)) for user in base]

    def user(self, org: str, user_id: str) -> User | None:
        return next((u for u in self.users(org) if u.id == user_id), None)

    def deactivate(self, org: str, user_id: str) -> None:
        with self.lock:
            self.changes[org].setdefault(user_id, Change()).active = False
            self.counters[org].actions += 1

    def set_tier(self, org: str, user_id: str, tier: str) -> None:
        if tier not in TIER_COST:
            raise ValueError(f"unknown tier {tier!r}")
        with self.lock:
            self.changes[org].setdefault(user_id, Change()).tier = tier
            self.counters[org].actions += 1

    # -- stats and resets ----------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, int]]:
        """Per org: logins, failed_logins, page_views, errors, actions, active_sessions."""
        now = _now()
        with self.lock:
            report = {org: dict(vars(c)) for org, c in self.counters.items()}
            for session in self.sessions.values():
                if now - session.started < self.faults.session_seconds:
                    entry = report.setdefault(session.org, dict(vars(Counters())))
                    entry["active_sessions"] = entry.get("active_sessions", 0) + 1
            for entry in report.values():
                entry.setdefault("active_sessions", 0)
            return dict(sorted(report.items()))

    def reset_counters(self) -> None:
        with self.lock:
            self.counters.clear()

    def reset(self) -> None:
        """Back to the state at startup: counters, sessions, user changes and faults."""
        with self.lock:
            self.counters.clear()
            self.sessions.clear()
            self.changes.clear()
        self.set_faults(self.config.faults, restart=True)


def _apply(user: User, change: Change | None) -> User:
    if change is None:
        return user
    return replace(
        user,
        active=user.active if change.active is None else change.active,
        tier=change.tier or user.tier,
    )


def _now() -> float:
    return time.monotonic()
