"""Browser session state: what is saved (cookies, localStorage, sessionStorage, URL), sealed
with greenroom.crypto, and how a context is rebuilt from it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenroom.browser.pool import InitialState
from greenroom.crypto import KeyRing

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext

PAGE_READ_SECONDS = 2.0

_READ_SESSION_STORAGE = """() => {
  const items = {};
  for (let i = 0; i < sessionStorage.length; i++) {
    const k = sessionStorage.key(i);
    if (k !== '__greenroom_restored') items[k] = sessionStorage.getItem(k);
  }
  return [location.origin, items];
}"""

# Runs in every new document; the '__greenroom_restored' mark keeps later navigations of the
# same tab from restoring (and so undoing the page's own changes) again.
_RESTORE_SESSION_STORAGE = """((saved) => {
  try {
    const items = saved[location.origin];
    if (!items || sessionStorage.getItem('__greenroom_restored') !== null) return;
    for (const [k, v] of Object.entries(items)) sessionStorage.setItem(k, v);
    sessionStorage.setItem('__greenroom_restored', '1');
  } catch (e) {}
})"""


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """A session's state in plain form (never logged, stored only encrypted)."""

    storage_state: dict[str, Any]
    session_storage: dict[str, dict[str, str]]
    url: str | None

    @property
    def cookie_count(self) -> int:
        return len(self.storage_state.get("cookies", []))

    def to_bytes(self) -> bytes:
        doc = {
            "storage_state": self.storage_state,
            "session_storage": self.session_storage,
            "url": self.url,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Snapshot:
        doc = json.loads(data)
        return cls(
            storage_state=doc["storage_state"],
            session_storage=doc.get("session_storage") or {},
            url=doc.get("url"),
        )

    def initial_state(self) -> InitialState:
        script = None
        if any(self.session_storage.values()):
            script = f"{_RESTORE_SESSION_STORAGE}({json.dumps(self.session_storage)})"
        return InitialState(storage_state=self.storage_state, init_script=script, url=self.url)


async def capture(context: BrowserContext, url: str | None) -> Snapshot:
    """Cookies and localStorage (Playwright's storage state) plus every open tab's
    sessionStorage, which Playwright's storage state leaves out."""
    storage_state: dict[str, Any] = dict(await context.storage_state())
    session_storage: dict[str, dict[str, str]] = {}
    for page in context.pages:
        if page.is_closed() or not page.url.startswith(("http://", "https://")):
            continue
        with contextlib.suppress(Exception):  # a page navigating away or hung: keep the others
            async with asyncio.timeout(PAGE_READ_SECONDS):
                origin, items = await page.evaluate(_READ_SESSION_STORAGE)
            if items:
                session_storage.setdefault(origin, {}).update(items)
    return Snapshot(storage_state=storage_state, session_storage=session_storage, url=url)


def seal(ring: KeyRing, snapshot: Snapshot, tenant: str, session_key: str) -> tuple[str, str]:
    return ring.encrypt(snapshot.to_bytes(), f"{tenant}\0{session_key}")


def unseal(ring: KeyRing, kid: str, blob: str, tenant: str, session_key: str) -> Snapshot | None:
    plain = ring.decrypt(kid, blob, f"{tenant}\0{session_key}")
    return None if plain is None else Snapshot.from_bytes(plain)
