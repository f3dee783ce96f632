"""One guarded HTTP delivery attempt: resolve once, check, connect to the checked address.

`post` never raises for network or HTTP problems; it records them in an `Attempt` for the
dispatcher to log and to decide on a retry. Callers should pass a long-lived client from
`new_client` so connections are pooled. The pool is keyed by the IP address the request is sent
to, which is fine: every attempt resolves and checks that address first, so a pooled connection
only ever leads to an allowed address. (An https connection verified for one host name may carry
a request for another name on the same address; both names pointed there, and the address is
public, so this reaches nothing a direct request could not.)
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from greenroom.delivery.address import (
    AddressPolicy,
    BlockedEndpoint,
    IPAddress,
    Resolver,
    UnresolvableEndpoint,
    parse_url,
    resolve,
)

#: The most of a response body an attempt reads; the rest is never received.
MAX_BODY_READ = 64 * 1024

# C0 and C1 controls but newline and tab, and the invisible ones that reorder or hide text.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
_NUMBER = re.compile(r"^\d+$")


@dataclass(frozen=True)
class Attempt:
    """What one attempt got: the status (None when there was no response), how long it took,
    the start of the body, how long the endpoint asked us to wait, and what went wrong when the
    status alone does not say (timeout, refused, redirect, blocked)."""

    status: int | None
    latency_ms: float
    excerpt: str = ""
    retry_after: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and self.error is None


def new_client(**kwargs: Any) -> httpx.AsyncClient:
    """A client for deliveries: never follows redirects, ignores proxy and certificate settings
    from the environment (a proxy would connect to the host itself, skipping the address check).
    Reuse it for every attempt; close it on shutdown."""
    return httpx.AsyncClient(follow_redirects=False, trust_env=False, **kwargs)


async def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    policy: AddressPolicy,
    timeout: float,
    client: httpx.AsyncClient | None = None,
    max_excerpt: int = 1024,
    resolver: Resolver | None = None,
) -> Attempt:
    """POST `body` to `url` once. `timeout` bounds the whole attempt: resolving, connecting,
    sending and reading the answer. Without `client`, a client is made and closed for this one
    attempt (no pooling). `resolver` replaces the system resolver (tests)."""
    started = time.monotonic()

    def elapsed() -> float:
        return (time.monotonic() - started) * 1000

    try:
        async with asyncio.timeout(timeout):
            if client is not None:
                result = await _attempt(url, body, headers, policy, timeout, client, resolver)
            else:
                async with new_client() as own:
                    result = await _attempt(url, body, headers, policy, timeout, own, resolver)
    except (TimeoutError, httpx.TimeoutException):
        return Attempt(None, elapsed(), error=f"timed out after {timeout:g} s")
    except BlockedEndpoint as exc:
        return Attempt(None, elapsed(), error=f"blocked: {exc}")
    except UnresolvableEndpoint as exc:
        return Attempt(None, elapsed(), error=str(exc))
    except (httpx.HTTPError, OSError) as exc:
        return Attempt(None, elapsed(), error=_describe(exc))
    status, raw, response_headers, charset = result
    location = response_headers.get("location")
    error = None
    if 300 <= status < 400:
        shown = _printable(location)[:500] if location else "nowhere"
        error = f"redirect to {shown} not followed"
    return Attempt(
        status=status,
        latency_ms=elapsed(),
        excerpt=_excerpt(raw, charset, max_excerpt),
        retry_after=retry_after(response_headers.get("retry-after")),
        error=error,
    )


async def _attempt(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    policy: AddressPolicy,
    timeout: float,
    client: httpx.AsyncClient,
    resolver: Resolver | None,
) -> tuple[int, bytes, httpx.Headers, str | None]:
    original = parse_url(url, policy)
    port = original.port or (443 if original.scheme == "https" else 80)
    addresses = await resolve(original.host, port, policy, resolver=resolver)
    response = await _send(client, original, addresses, body, headers, timeout)
    try:
        raw = await _read(response, MAX_BODY_READ)
    finally:
        await response.aclose()
    return response.status_code, raw, response.headers, response.charset_encoding


async def _send(
    client: httpx.AsyncClient,
    original: httpx.URL,
    addresses: list[IPAddress],
    body: bytes,
    headers: Mapping[str, str],
    timeout: float,
) -> httpx.Response:
    """The response from the first checked address that accepts a connection ("localhost" may
    answer ::1 first while the endpoint listens on 127.0.0.1 only). Only a failed connect moves
    on, when nothing has been sent, so an event is never posted twice in one attempt."""
    for ip in addresses[:-1]:
        try:
            request = _request(original, ip, body, headers, timeout)
            return await client.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError:
            continue
    request = _request(original, addresses[-1], body, headers, timeout)
    return await client.send(request, stream=True, follow_redirects=False)


def _request(
    original: httpx.URL, ip: IPAddress, body: bytes, headers: Mapping[str, str], timeout: float
) -> httpx.Request:
    """A request to the checked address that still names the original host: in the Host header,
    and for https in the TLS server name and the certificate check. Built without the client's
    defaults, so no cookie or header one endpoint set reaches another."""
    host = original.raw_host.decode("ascii")
    sent = httpx.Headers(headers)  # case-insensitive: the caller's Host cannot add a second one
    sent["Host"] = original.netloc.decode("ascii")
    sent["Accept-Encoding"] = "identity"  # the excerpt reads raw bytes; no decompression bombs
    sent.setdefault("User-Agent", "greenroom")
    extensions: dict[str, Any] = {"timeout": httpx.Timeout(timeout).as_dict()}
    if original.scheme == "https":
        extensions["sni_hostname"] = host
    return httpx.Request(
        "POST",
        original.copy_with(host=str(ip)),
        headers=sent,
        content=body,
        extensions=extensions,
    )


async def _read(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _excerpt(raw: bytes, charset: str | None, limit: int) -> str:
    try:
        text = raw.decode(charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset, or a bytes-to-bytes codec such as "zlib"
        text = raw.decode("utf-8", errors="replace")
    return _printable(text[:limit])


def _printable(text: str) -> str:
    """The text with control characters other than newline and tab escaped (\\x1b), so an
    excerpt cannot drive a terminal or forge log lines."""
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), never
    negative; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if _NUMBER.match(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _describe(exc: BaseException) -> str:
    """A short, stable description of a network failure."""
    causes: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(causes) < 10:
        causes.append(current)
        current = current.__cause__ or current.__context__
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.RemoteProtocolError) and "without sending" in text:
        return "connection closed without a response"
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return f"TLS certificate not accepted: {_printable(text)[:300]}"
    return _printable(f"{type(exc).__name__}: {text}")[:300]
