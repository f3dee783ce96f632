"""Session tokens and CSRF tokens on their own: signed, expiring, bound to their secret key and
to their session."""

from __future__ import annotations

import base64
import os

from greenroom.crypto import KeyRing
from greenroom.model import ApiKey, Role
from greenroom.ui.session import LIFETIME_SECONDS, Signer

NOW = 1_800_000_000.0


def keyring() -> KeyRing:
    return KeyRing(os.urandom(32))


def key(hash_: str = "h1") -> ApiKey:
    return ApiKey(
        id="grk_0123456789ab",
        tenant="acme",
        role=Role.OPERATOR,
        name="k",
        hash=hash_,
        created_by="test",
        created_at=NOW,
    )


def test_a_session_names_its_key_and_expires() -> None:
    signer = Signer(keyring())
    token = signer.issue(key(), NOW)
    session = signer.read(token, NOW + 60)
    assert session is not None and session.key_id == "grk_0123456789ab"
    assert session.expires_at == NOW + LIFETIME_SECONDS
    assert signer.read(token, NOW + LIFETIME_SECONDS) is None
    assert signer.issue(key(), NOW) != token, "each sign-in gets its own token"


def test_a_changed_or_foreign_token_is_refused() -> None:
    ring = keyring()
    signer = Signer(ring)
    token = signer.issue(key(), NOW)
    body, signature = token.split(".")
    payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    longer = payload.replace(str(int(NOW + LIFETIME_SECONDS)).encode(), b"9999999999")
    assert longer != payload
    forged = base64.urlsafe_b64encode(longer).decode().rstrip("=") + "." + signature
    for bad in (forged, body, "." + signature, "", "x" * 1000, token + "x", "%%.%%"):
        assert signer.read(bad, NOW) is None, bad
    assert Signer(keyring()).read(token, NOW) is None, "another secret key's token"
    assert Signer(ring).read(token, NOW) is not None, "the same secret key on another node"


def test_csrf_tokens_are_bound_to_their_session_and_subkey() -> None:
    ring = keyring()
    signer = Signer(ring)
    one, two = signer.issue(key(), NOW), signer.issue(key(), NOW)
    assert signer.csrf_ok(one, signer.csrf(one))
    assert not signer.csrf_ok(one, signer.csrf(two))
    assert not signer.csrf_ok(one, None) and not signer.csrf_ok(one, "")
    assert not Signer(keyring()).csrf_ok(one, signer.csrf(one))
    # The subkeys differ by purpose: a session signature is not a CSRF token.
    assert ring.subkey("ui-session") != ring.subkey("ui-csrf")
    assert signer.csrf(one) != one.split(".")[1]
