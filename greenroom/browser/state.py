"""Browser session state: what is saved (cookies, localStorage, sessionStorage, URL), how it is
encrypted at rest (AES-GCM, with a key id so keys can rotate), and how a context is rebuilt."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import os
import secrets
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from greenroom.browser.pool import InitialState
from greenroom.errors import ConfigError
from greenroom.settings import Settings

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext

KEY_FILE = "secret.key"
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


# -- encryption ----------------------------------------------------------------------------


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def _decode_key(text: str, what: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigError(
            f"{what} must be base64 of 32 random bytes; make one with: python -c "
            '"import base64, os; print(base64.b64encode(os.urandom(32)).decode())"'
        )
    return key


class KeyRing:
    """Encrypts with the current key; decrypts with any key it knows, found by key id."""

    def __init__(self, current: bytes, previous: list[bytes] | None = None) -> None:
        self.current_id = key_id(current)
        self._keys = {key_id(k): AESGCM(k) for k in [*(previous or []), current]}

    def encrypt(self, plain: bytes, context: str) -> tuple[str, str]:
        """(key id, base64 of nonce + ciphertext); `context` is bound as associated data."""
        nonce = os.urandom(12)
        sealed = self._keys[self.current_id].encrypt(nonce, zlib.compress(plain), context.encode())
        return self.current_id, base64.b64encode(nonce + sealed).decode()

    def decrypt(self, kid: str, blob: str, context: str) -> bytes | None:
        """The plaintext; None for an unknown key id or a blob that fails authentication."""
        aead = self._keys.get(kid)
        if aead is None:
            return None
        raw = base64.b64decode(blob)
        try:
            return zlib.decompress(aead.decrypt(raw[:12], raw[12:], context.encode()))
        except (InvalidTag, zlib.error):
            return None


def load_keyring(settings: Settings) -> KeyRing:
    """The key from settings (GREENROOM_SECRET_KEY); for the embedded SQLite default, a key
    file beside the database, created with 0600 permissions on first use."""
    previous = [
        _decode_key(k, "GREENROOM_PREVIOUS_SECRET_KEYS")
        for k in settings.previous_secret_keys.split(",")
        if k.strip()
    ]
    if settings.secret_key is not None:
        return KeyRing(_decode_key(settings.secret_key.get_secret_value(), "secret_key"), previous)
    if not settings.db.startswith("sqlite:///"):
        raise ConfigError(
            "set GREENROOM_SECRET_KEY (the same on every worker) to save browser sessions: "
            "base64 of 32 random bytes"
        )
    path = Path(settings.db.removeprefix("sqlite:///")).parent / KEY_FILE
    return KeyRing(_decode_key(_key_file(path), str(path)), previous)


def _key_file(path: Path) -> str:
    """Read the key file, creating it atomically if absent (two workers starting at once
    must end up with the same key)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, base64.b64encode(os.urandom(32)) + b"\n")
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
    return path.read_text()


def seal(ring: KeyRing, snapshot: Snapshot, tenant: str, session_key: str) -> tuple[str, str]:
    return ring.encrypt(snapshot.to_bytes(), f"{tenant}\0{session_key}")


def unseal(ring: KeyRing, kid: str, blob: str, tenant: str, session_key: str) -> Snapshot | None:
    plain = ring.decrypt(kid, blob, f"{tenant}\0{session_key}")
    return None if plain is None else Snapshot.from_bytes(plain)
