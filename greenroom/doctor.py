"""`greenroom doctor`: what an operator checks first when something is wrong, in one go.

Each check says what it found in one line; a failed check never stops the others (a database
that is down still lets the browser and the key be checked). The summaries check is the one
`--repair` mends (storage.repair).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from greenroom.errors import GreenroomError

if TYPE_CHECKING:
    from greenroom.settings import Settings
    from greenroom.storage import RunStore

Status = Literal["ok", "warn", "fail"]
#: Clocks further apart than this make leases expire early or late.
SKEW_WARN = 0.5
SKEW_FAIL = 2.0
#: How long launching the browser may take.
BROWSER_SECONDS = 60.0


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


def database(store: RunStore) -> Check:
    from greenroom.storage import SCHEMA_REVISION, schema_revision

    revision = schema_revision(store.backend)
    if revision != SCHEMA_REVISION:
        return Check("database", "fail", f"schema {revision}, not {SCHEMA_REVISION}: db upgrade")
    return Check("database", "ok", f"reachable, schema {revision} (current)")


def workers(store: RunStore, lease_seconds: float) -> Check:
    """Workers whose heartbeat is older than their lease are presumed lost."""
    now = store.clock.now()
    live = [w for w in store.runs.workers() if w.state == "alive"]
    late = [w for w in live if now - w.heartbeat_at > lease_seconds]
    if not live:
        return Check("workers", "warn", "none running: queued runs wait for one")
    if late:
        names = ", ".join(f"{w.id} ({now - w.heartbeat_at:.0f} s)" for w in late[:5])
        return Check("workers", "fail", f"{len(late)} of {len(live)} silent past a lease: {names}")
    oldest = max(now - w.heartbeat_at for w in live)
    slots = sum(w.concurrency for w in live)
    return Check(
        "workers", "ok", f"{len(live)} running, {slots} slots; heartbeats ≤ {oldest:.1f} s old"
    )


def clock_skew(store: RunStore) -> Check:
    """This machine's clock against the database server's (leases are compared across both)."""
    if store.backend.url.startswith("sqlite"):
        return Check("clock", "ok", "SQLite: the database uses this machine's clock")
    with store.backend.transaction(write=False) as tx:
        before = time.time()
        (row,) = tx.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp()) AS now")
        after = time.time()
    skew = float(row["now"]) - (before + after) / 2
    status: Status = "ok" if abs(skew) < SKEW_WARN else "warn" if abs(skew) < SKEW_FAIL else "fail"
    return Check("clock", status, f"database server {skew:+.3f} s from this machine")


def secret_key(settings: Settings, store: RunStore | None) -> Check:
    """The key is set and opens what is sealed: one integration's credentials, else a sample."""
    from greenroom.crypto import load_keyring

    ring = load_keyring(settings)
    sealed = store.accounts.integrations()[:1] if store is not None else []
    if sealed:
        from greenroom.integrations import opens

        found = sealed[0]
        if not opens(ring, found):
            return Check(
                "secret key",
                "fail",
                f"cannot open integration {found.id}'s credentials (sealed with {found.key_id})",
            )
        return Check("secret key", "ok", f"opens integration {found.id}'s credentials")
    kid, blob = ring.encrypt(b"greenroom doctor", "doctor")
    if ring.decrypt(kid, blob, "doctor") != b"greenroom doctor":
        return Check("secret key", "fail", "cannot open what it sealed")
    return Check("secret key", "ok", "set; seals and opens a sample (no credentials stored yet)")


def browser(settings: Settings) -> Check:
    """Found and launchable: a worker would launch this one."""
    from playwright.sync_api import sync_playwright

    from greenroom.browser.launch import find_browser

    found = find_browser(settings)
    started = time.monotonic()
    with sync_playwright() as pw:
        launched = pw.chromium.launch(
            executable_path=found.path, headless=True, timeout=BROWSER_SECONDS * 1000
        )
        version = launched.version
        launched.close()
    took = time.monotonic() - started
    return Check(
        "browser", "ok", f"{found.path} ({found.source}) {version}, launched in {took:.1f} s"
    )


def summaries(store: RunStore) -> Check:
    drift = store.repair.summary_drift()
    if drift:
        return Check("summaries", "fail", f"{len(drift)} drifted: --repair mends")
    return Check("summaries", "ok", "agree with the runs")


def guarded(name: str, check: Callable[[], Check]) -> Check:
    """A check that raised failed, saying why in one line."""
    try:
        return check()
    except (GreenroomError, OSError) as exc:
        return Check(name, "fail", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except Exception as exc:  # a driver's or Playwright's own error: still one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Check(name, "fail", f"{type(exc).__name__}: {first}")
