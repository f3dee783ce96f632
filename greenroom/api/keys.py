"""API key secrets: made once, shown once, kept only as a hash.

A key reads `grk_<12 hex>.<secret>`: the part before the dot is the key's id (its visible prefix,
used to find it), the whole string is hashed with SHA-256 (the secret is 256 random bits, so a
fast hash is safe) and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from greenroom.model import ApiKey, Role
from greenroom.storage.accounts import Accounts


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    accounts: Accounts,
    *,
    tenant: str | None,
    role: Role,
    name: str,
    actor: str,
    expires_at: float | None = None,
    rate_limit: int | None = None,
) -> tuple[ApiKey, str]:
    """A new key and its secret, which is never stored: give it to its user now."""
    key_id = "grk_" + secrets.token_hex(6)
    full = f"{key_id}.{secrets.token_urlsafe(32)}"
    key = accounts.add_api_key(
        key_id=key_id,
        tenant=tenant,
        role=role,
        name=name,
        key_hash=hash_key(full),
        actor=actor,
        expires_at=expires_at,
        rate_limit=rate_limit,
    )
    return key, full


def split_key(presented: str) -> str | None:
    """The key id of a presented key, or None if it is not shaped like one."""
    key_id, dot, secret = presented.partition(".")
    if not dot or not key_id.startswith("grk_") or len(key_id) > 40 or not secret:
        return None
    return key_id


def matches(key: ApiKey, presented: str) -> bool:
    return bool(key.hash) and hmac.compare_digest(key.hash, hash_key(presented))
