"""Failures as runs record them: their class (transient, permanent, unknown), their stored
description, and the fingerprint that groups similar ones."""

from __future__ import annotations

import enum
import hashlib
import re
import traceback
from collections.abc import Callable
from typing import Any

from greenroom.errors import PermanentError


class TransientError(Exception):
    """Raised by workflow code for failures a retry may fix (a flaky page, a 503)."""


class ErrorClass(enum.StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    UNKNOWN = "unknown"


_TRANSIENT_NAMES = {
    "TimeoutError",  # asyncio, builtins and Playwright all use this name
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "RemoteProtocolError",
    "ReadError",
    "WriteError",
    "PoolTimeout",
    "TargetClosedError",
}


def _status(exc: BaseException) -> int | None:
    for attr in ("status_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    value = getattr(response, "status_code", None)
    return value if isinstance(value, int) else None


def classify(exc: BaseException) -> ErrorClass:
    """Transient: timeouts, network errors, HTTP 5xx/429. Permanent: PermanentError (auth failure,
    invalid input, business rule) and HTTP 4xx. Everything else is unknown."""
    if isinstance(exc, PermanentError):
        return ErrorClass.PERMANENT
    if isinstance(exc, TransientError | ConnectionError | TimeoutError):
        return ErrorClass.TRANSIENT
    if type(exc).__name__ in _TRANSIENT_NAMES:
        return ErrorClass.TRANSIENT
    status = _status(exc)
    if status is not None:
        if status >= 500 or status in (408, 429):
            return ErrorClass.TRANSIENT
        if 400 <= status < 500:
            return ErrorClass.PERMANENT
    return ErrorClass.UNKNOWN


_NORMALIZERS = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I), "<uuid>"),
    (re.compile(r"https?://\S+"), "<url>"),
    (re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"), "<email>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.I), "<hex>"),
    (re.compile(r"\b[0-9a-f]{16,}\b", re.I), "<hex>"),
    (re.compile(r"\d+(\.\d+)?"), "<n>"),
    (re.compile(r"'[^']{40,}'|\"[^\"]{40,}\""), "<text>"),
]


def normalize_message(message: str) -> str:
    """The message with ids, numbers, URLs and addresses replaced, so similar failures group."""
    text = message.strip()[:500]
    for pattern, placeholder in _NORMALIZERS:
        text = pattern.sub(placeholder, text)
    return text


def fingerprint(error_type: str, message: str, step: str | None) -> str:
    key = f"{error_type}\n{normalize_message(message)}\n{step or ''}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def describe_error(
    exc: BaseException,
    *,
    step: str | None = None,
    attempt: int | None = None,
    redact: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """An error as stored on a run or step: type, message, traceback, where, class and group.
    `redact` removes the run's secrets (a failed URL may carry a token) before anything is kept."""
    clean = redact or (lambda text: text)
    error_type = type(exc).__qualname__
    message = clean(str(exc))
    return {
        "type": error_type,
        "message": message,
        "traceback": clean("".join(traceback.format_exception(exc))),
        "step": step,
        "attempt": attempt,
        "class": classify(exc).value,
        "fingerprint": fingerprint(error_type, message, step),
    }
