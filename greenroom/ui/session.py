"""The console's sign-in: a signed session cookie that names an API key (never holds it), and
CSRF tokens bound to the session.

The cookie carries `key id | expiry | fingerprint of the key's stored hash | nonce`, signed with
HMAC-SHA256 under a subkey of the secret key. Every request looks the key up again, so a revoked
or expired key ends its sessions at once; the fingerprint ends them if the key were replaced.
A CSRF token is the HMAC of the session token under another subkey: a page can only be posted
to by one that was rendered for the same session.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from greenroom.crypto import KeyRing
from greenroom.model import ApiKey

COOKIE = "greenroom_session"
#: Before sign-in: a nonce the login form's CSRF token is bound to.
LOGIN_COOKIE = "greenroom_login"
PATH = "/ui"
LIFETIME_SECONDS = 12 * 3600
LOGIN_SECONDS = 3600
#: Where htmx sends the CSRF token; forms send it as the `csrf` field.
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fingerprint(key: ApiKey) -> str:
    """Names the key's stored hash without revealing it."""
    return hashlib.sha256(key.hash.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Session:
    key_id: str
    expires_at: float
    key_fingerprint: str
    #: The cookie's value, which CSRF tokens are bound to.
    token: str


class Signer:
    """Issues and reads session tokens and their CSRF tokens."""

    def __init__(self, keyring: KeyRing) -> None:
        self._session_key = keyring.subkey("ui-session")
        self._csrf_key = keyring.subkey("ui-csrf")

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._session_key, payload, "sha256").digest()

    def issue(self, key: ApiKey, now: float) -> str:
        expires = int(now + LIFETIME_SECONDS)
        payload = f"{key.id}|{expires}|{fingerprint(key)}|{secrets.token_hex(8)}".encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def read(self, token: str | None, now: float) -> Session | None:
        """The session a cookie names, if its signature holds and it has not expired."""
        if not token or len(token) > 400:
            return None
        body, dot, signature = token.partition(".")
        try:
            payload, presented = _unb64(body), _unb64(signature)
        except (binascii.Error, ValueError):
            return None
        if not dot or not hmac.compare_digest(presented, self._sign(payload)):
            return None
        try:
            key_id, expires, key_fingerprint, _ = payload.decode().split("|")
            expires_at = float(int(expires))
        except ValueError:
            return None
        if now >= expires_at:
            return None
        return Session(key_id, expires_at, key_fingerprint, token)

    def csrf(self, bound_to: str) -> str:
        """The CSRF token of a session token (or of a login nonce)."""
        return _b64(hmac.new(self._csrf_key, bound_to.encode(), "sha256").digest())

    def csrf_ok(self, bound_to: str, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(
            self.csrf(bound_to).encode(), (presented or "").encode()
        )
