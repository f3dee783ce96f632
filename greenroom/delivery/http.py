"""One guarded HTTP delivery attempt, on aiohttp with keep-alive connections per origin.

`Client.post` never raises for network or HTTP problems; it records them in an `Attempt` for the
dispatcher to log and to decide on a retry. Keep one long-lived `Client` so connections are
pooled. The address check sits in the connector's resolver: every new connection resolves its
host once, refuses it if any answer is blocked, and connects only to the checked answers, so DNS
rebinding between the check and the connection is impossible. A pooled connection was checked
when it was made and only ever leads to that address. (IP literals skip the resolver; `parse_url`
checks them before each attempt.)
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict, CIMultiDictProxy

from greenroom.delivery.address import (
    AddressPolicy,
    BlockedEndpoint,
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
_NUMERIC = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


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


class _GuardedResolver(AbstractResolver):
    """aiohttp connects only to the addresses this returns: each checked against the policy."""

    def __init__(self, policy: AddressPolicy, resolver: Resolver | None) -> None:
        self.policy = policy
        self.resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await resolve(host, port, self.policy, resolver=self.resolver)
        return [
            {
                "hostname": host,
                "host": str(ip),
                "port": port,
                "family": socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                "proto": socket.IPPROTO_TCP,
                "flags": _NUMERIC,
            }
            for ip in addresses
        ]

    async def close(self) -> None:
        pass


class Client:
    """Connections for deliveries under one address policy: never follows redirects, keeps no
    cookies, ignores proxy settings from the environment (a proxy would connect to the host
    itself, skipping the address check), verifies certificates (`ssl`, a context trusting other
    authorities in tests). `resolver` replaces the system resolver (tests); `socket_factory`
    makes the sockets (tests watch where connections go). Close it on shutdown."""

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        socket_factory: aiohttp.connector.SocketFactoryType | None = None,
    ) -> None:
        self.policy = policy
        self._resolver = resolver
        self._ssl: ssl.SSLContext | bool = ssl_context or True
        self._socket_factory = socket_factory
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        """Made at the first attempt, inside the event loop it will run on."""
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=_GuardedResolver(self.policy, self._resolver),
                use_dns_cache=False,  # resolved and checked for every new connection
                ssl=self._ssl,
                limit=0,  # the dispatcher bounds how many attempts run at once
                socket_factory=self._socket_factory,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None),  # `post` bounds the whole attempt
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout: float,
        max_excerpt: int = 1024,
    ) -> Attempt:
        """POST `body` to `url` once. `timeout` bounds the whole attempt: resolving, connecting,
        sending and reading the answer."""
        started = time.monotonic()

        def elapsed() -> float:
            return (time.monotonic() - started) * 1000

        try:
            async with asyncio.timeout(timeout):
                status, raw, response_headers, charset = await self._attempt(url, body, headers)
        except TimeoutError:
            return Attempt(None, elapsed(), error=f"timed out after {timeout:g} s")
        except BlockedEndpoint as exc:
            return Attempt(None, elapsed(), error=f"blocked: {exc}")
        except (aiohttp.ClientError, OSError) as exc:
            return Attempt(None, elapsed(), error=_describe(exc))
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
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, bytes, CIMultiDictProxy[str], str | None]:
        """The request names the original host (Host header, TLS server name and certificate
        check); its connection goes to an address the resolver checked. No header of the
        session's reaches the endpoint but aiohttp's defaults."""
        original = parse_url(url, self.policy)
        sent = CIMultiDict(headers)
        sent.popall("Host", None)  # aiohttp names the URL's host: the caller cannot add another
        sent["Accept-Encoding"] = "identity"  # the excerpt reads raw bytes; no decompression bombs
        sent.setdefault("User-Agent", "greenroom")
        session = self._open()
        async with session.post(original, data=body, headers=sent, allow_redirects=False) as r:
            raw, whole = await _read(r.content, MAX_BODY_READ)
            if not whole:
                r.close()  # the rest is never received: the connection is not reused
            return r.status, raw, r.headers, r.charset


async def _read(content: aiohttp.StreamReader, limit: int) -> tuple[bytes, bool]:
    """Up to `limit` bytes of the body, and whether that was all of it."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await content.readany()
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:limit], False


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
        if isinstance(cause, UnresolvableEndpoint):  # the resolver's, wrapped by aiohttp
            return str(cause)
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed without a response"
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return f"TLS certificate not accepted: {_printable(text)[:300]}"
    return _printable(f"{type(exc).__name__}: {text}")[:300]
