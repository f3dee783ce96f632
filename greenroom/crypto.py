"""Encryption at rest: AES-GCM with a key id on every blob, so keys can rotate.

Saved browser sessions and integration credentials are sealed with the current key and opened
with any key the ring knows (GREENROOM_SECRET_KEY, then GREENROOM_PREVIOUS_SECRET_KEYS).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from greenroom.errors import ConfigError

if TYPE_CHECKING:
    from greenroom.settings import Settings

KEY_FILE = "secret.key"


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
        # Imported here: a worker whose runs neither save sessions nor open credentials never
        # makes a key ring, and its start-up does without the library.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.current_id = key_id(current)
        self._current = current
        self._keys = {key_id(k): AESGCM(k) for k in [*(previous or []), current]}

    def encrypt(self, plain: bytes, context: str) -> tuple[str, str]:
        """(key id, base64 of nonce + ciphertext); `context` is bound as associated data."""
        nonce = os.urandom(12)
        sealed = self._keys[self.current_id].encrypt(nonce, zlib.compress(plain), context.encode())
        return self.current_id, base64.b64encode(nonce + sealed).decode()

    def subkey(self, purpose: str) -> bytes:
        """A key for one purpose (signing the console's sessions, say), derived from the
        current key so that a leak of one purpose's key reveals neither the others nor the
        encryption key. Rotating the secret key changes every subkey."""
        return hmac.new(self._current, b"greenroom subkey:" + purpose.encode(), "sha256").digest()

    def decrypt(self, kid: str, blob: str, context: str) -> bytes | None:
        """The plaintext; None for an unknown key id or a blob that fails authentication."""
        aead = self._keys.get(kid)
        if aead is None:
            return None
        from cryptography.exceptions import InvalidTag

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
            "set GREENROOM_SECRET_KEY (the same on every node) to encrypt browser sessions and "
            "credentials: "
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
