"""The guarded webhook sender against real servers on 127.0.0.1, and the address policy."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import ipaddress
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from greenroom.delivery.address import (
    AddressPolicy,
    BlockedEndpoint,
    UnresolvableEndpoint,
    check_url,
    resolve,
    why_blocked,
)
from greenroom.delivery.http import MAX_BODY_READ, Attempt, Client, retry_after
from greenroom.settings import load_settings

OPEN = AddressPolicy(allow_http=True, allow_private=True)
HUGE = 50 * 1024 * 1024


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    names: list[str]  # every header name as sent, repeats included


@dataclass
class Receiver:
    """A tiny HTTP/1.1 server whose path picks its behaviour."""

    port: int = 0
    requests: list[Received] = field(default_factory=list)
    huge_sent: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            received = await _read_request(reader)
            self.requests.append(received)
            await self.respond(received.path, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()

    async def respond(self, path: str, writer: asyncio.StreamWriter) -> None:
        if path in _SIMPLE:
            writer.write(_SIMPLE[path]())
        elif path == "/slow":
            await asyncio.sleep(2)
            writer.write(_response(200, b"late"))
        elif path == "/hang":
            await asyncio.Event().wait()
        elif path == "/trickle":
            writer.write(_head(200, {"Content-Length": "1000000"}))
            while True:
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)
        elif path == "/huge":
            writer.write(_head(200, {"Content-Length": str(HUGE)}))
            chunk = b"y" * 65536
            while self.huge_sent < HUGE:
                writer.write(chunk)
                await writer.drain()
                self.huge_sent += len(chunk)
        elif path == "/reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return  # abort() with a zero linger sends RST
        elif path == "/close":
            writer.close()
            return
        await writer.drain()


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join([*lines, "Connection: close", "", ""])).encode()


def _response(status: int, body: bytes = b"", **headers: str) -> bytes:
    fields = {
        "Content-Length": str(len(body)),
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }
    return _head(status, fields) + body


def _http_date(seconds: float) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return email.utils.format_datetime(when, usegmt=True)


_SIMPLE: dict[str, Callable[[], bytes]] = {
    "/ok": lambda: _response(200, b"hello, greenroom", Content_Type="text/plain; charset=utf-8"),
    "/500": lambda: _response(500, b"boom"),
    "/410": lambda: _response(410, b"gone"),
    "/429s": lambda: _response(429, Retry_After="7"),
    "/429d": lambda: _response(429, Retry_After=_http_date(30)),
    "/302": lambda: _response(302, Location="http://127.0.0.1:1/elsewhere"),
    "/control": lambda: _response(200, b"a\x1b[31mred\r\nfake log line\tok\x00\xff\xe2\x80\xae"),
    "/long": lambda: _response(200, b"z" * 5000),
}


async def _read_request(reader: asyncio.StreamReader) -> Received:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    headers = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    names = [line.split(":", 1)[0].lower() for line in lines[1:] if line]
    return Received(path, headers, body, names)


@contextlib.asynccontextmanager
async def serve(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Receiver]:
    receiver = Receiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0, ssl=ssl_context)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        for task in list(receiver.tasks):
            task.cancel()
        await asyncio.gather(*receiver.tasks, return_exceptions=True)
        await server.wait_closed()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serve() as running:
        yield running


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    c = Client(OPEN)
    yield c
    await c.close()


async def send(
    url: str, client: Client, *, timeout: float = 5.0, max_excerpt: int = 1024
) -> Attempt:
    return await client.post(
        url,
        b'{"type":"run.finished"}',
        {"webhook-id": "msg_1", "host": "evil.example", "user-agent": "hooks/1"},
        timeout=timeout,
        max_excerpt=max_excerpt,
    )


@contextlib.asynccontextmanager
async def guarded(policy: AddressPolicy, **kwargs: Any) -> AsyncIterator[Client]:
    c = Client(policy, **kwargs)
    try:
        yield c
    finally:
        await c.close()


# -- responses ----------------------------------------------------------------------------------


async def test_success_records_status_excerpt_and_headers(
    receiver: Receiver, client: Client
) -> None:
    attempt = await send(receiver.url("/ok", host="localhost"), client)
    assert attempt.ok and attempt.status == 200 and attempt.error is None
    assert attempt.excerpt == "hello, greenroom"
    assert attempt.retry_after is None and 0 < attempt.latency_ms < 5000
    [request] = receiver.requests
    assert request.headers["host"] == f"localhost:{receiver.port}"
    assert request.names.count("host") == 1
    assert request.headers["webhook-id"] == "msg_1"
    assert request.headers["accept-encoding"] == "identity"
    assert request.headers["user-agent"] == "hooks/1"
    assert request.body == b'{"type":"run.finished"}'


@pytest.mark.parametrize(
    ("path", "status", "excerpt"), [("/500", 500, "boom"), ("/410", 410, "gone")]
)
async def test_error_statuses_are_recorded(
    receiver: Receiver, client: Client, path: str, status: int, excerpt: str
) -> None:
    attempt = await send(receiver.url(path), client)
    assert (attempt.status, attempt.ok, attempt.excerpt) == (status, False, excerpt)


async def test_retry_after_in_seconds_and_as_a_date(receiver: Receiver, client: Client) -> None:
    seconds = await send(receiver.url("/429s"), client)
    assert (seconds.status, seconds.retry_after) == (429, 7.0)
    dated = await send(receiver.url("/429d"), client)
    assert dated.status == 429 and dated.retry_after is not None
    assert 20 <= dated.retry_after <= 31


def test_retry_after_parsing() -> None:
    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    assert retry_after(None) is None
    assert retry_after(" 120 ") == 120.0
    assert retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0  # past: clamped
    assert retry_after("-5") is None and retry_after("soon") is None


async def test_redirects_are_not_followed(receiver: Receiver, client: Client) -> None:
    attempt = await send(receiver.url("/302"), client)
    assert attempt.status == 302 and not attempt.ok
    assert attempt.error == "redirect to http://127.0.0.1:1/elsewhere not followed"
    assert len(receiver.requests) == 1


async def test_excerpt_is_capped_and_control_characters_escaped(
    receiver: Receiver, client: Client
) -> None:
    attempt = await send(receiver.url("/control"), client)
    assert attempt.excerpt == "a\\x1b[31mred\\x0d\nfake log line\tok\\x00\ufffd\\u202e"
    long = await send(receiver.url("/long"), client, max_excerpt=100)
    assert long.excerpt == "z" * 100


# -- time and size limits -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/slow", "/hang", "/trickle"])
async def test_whole_attempt_timeout(receiver: Receiver, client: Client, path: str) -> None:
    started = time.monotonic()
    attempt = await send(receiver.url(path), client, timeout=0.5)
    took = time.monotonic() - started
    assert attempt.status is None and attempt.error == "timed out after 0.5 s"
    assert 0.45 <= took < 3
    assert 450 <= attempt.latency_ms < 3000


async def test_huge_body_is_not_read(receiver: Receiver, client: Client) -> None:
    started = time.monotonic()
    attempt = await send(receiver.url("/huge"), client, timeout=20)
    assert time.monotonic() - started < 5
    assert attempt.ok and attempt.excerpt == "y" * 1024
    await asyncio.sleep(0.2)  # the server notices the closed connection
    assert receiver.huge_sent < 16 * 1024 * 1024  # far from the 50 MB: the client stopped early
    assert MAX_BODY_READ == 64 * 1024


# -- connection failures ------------------------------------------------------------------------


async def test_connection_reset(receiver: Receiver, client: Client) -> None:
    attempt = await send(receiver.url("/reset"), client)
    assert attempt.status is None and attempt.error == "connection reset"


async def test_connection_closed_without_answer(receiver: Receiver, client: Client) -> None:
    attempt = await send(receiver.url("/close"), client)
    assert attempt.status is None and attempt.error == "connection closed without a response"


async def test_connection_refused(client: Client) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    attempt = await send(f"http://127.0.0.1:{port}/", client)
    assert attempt.status is None and attempt.error == "connection refused"


async def test_unresolvable_host_is_a_delivery_failure(client: Client) -> None:
    attempt = await send("https://nowhere.invalid/", client)
    assert attempt.status is None and attempt.error is not None
    assert attempt.error.startswith("host nowhere.invalid does not resolve")


async def test_blocked_endpoints_are_recorded_not_raised(receiver: Receiver) -> None:
    async with guarded(AddressPolicy(allow_http=True)) as public:
        attempt = await send(receiver.url("/ok"), public)
        assert attempt.status is None and not attempt.ok
        assert attempt.error is not None
        assert attempt.error.startswith("blocked: address 127.0.0.1")
        by_name = await send(receiver.url("/ok", host="localhost"), public)
        assert by_name.error is not None and by_name.error.startswith("blocked: host localhost")
    async with guarded(AddressPolicy(allow_private=True)) as https_only:
        plain = await send(receiver.url("/ok"), https_only)
    assert plain.error is not None and "GREENROOM_DELIVERY_ALLOW_HTTP" in plain.error
    assert receiver.requests == []


# -- DNS rebinding ------------------------------------------------------------------------------


def _flipping(
    first: str, then: str
) -> tuple[list[str], Callable[[str, int], Awaitable[list[str]]]]:
    calls: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return [first] if len(calls) == 1 else [then]

    return calls, resolver


async def test_dns_rebinding_cannot_redirect_the_connection(receiver: Receiver) -> None:
    """The resolver answers a public address, then 127.0.0.1: the connection goes to the public
    address that was checked (stopped at the socket, refused), and the next connection is
    blocked."""
    calls, resolver = _flipping("93.184.216.34", "127.0.0.1")
    connected: list[tuple[Any, ...]] = []

    def refuse(addr_info: tuple[Any, ...]) -> socket.socket:
        connected.append(addr_info[4])
        raise ConnectionRefusedError

    async with guarded(
        AddressPolicy(allow_http=True), resolver=resolver, socket_factory=refuse
    ) as spy:
        url = receiver.url("/ok", host="rebind.example")
        first = await send(url, spy, timeout=2)
        assert first.error == "connection refused"
        assert connected == [("93.184.216.34", receiver.port)]
        again = await send(url, spy, timeout=2)
    assert again.error is not None and again.error.startswith("blocked: host rebind.example")
    assert calls == ["rebind.example", "rebind.example"]  # once per new connection
    assert connected == [("93.184.216.34", receiver.port)]
    assert receiver.requests == []


async def test_connection_goes_to_the_resolved_address(receiver: Receiver) -> None:
    """Resolved once: a second lookup would answer an unroutable address and fail."""
    calls, resolver = _flipping("127.0.0.1", "192.0.2.1")
    async with guarded(OPEN, resolver=resolver) as client:
        attempt = await send(receiver.url("/ok", host="hooks.example"), client)
    assert attempt.ok and len(calls) == 1
    assert receiver.requests[0].headers["host"] == f"hooks.example:{receiver.port}"


async def test_a_refused_address_falls_back_to_the_next_checked_one(receiver: Receiver) -> None:
    """Like "localhost" answering ::1 first: nothing listens on 127.0.0.2, 127.0.0.1 answers."""
    async with guarded(OPEN, resolver=_fixed("127.0.0.2", "127.0.0.1")) as client:
        attempt = await send(receiver.url("/ok", host="dual.example"), client)
    assert attempt.ok, attempt.error
    assert len(receiver.requests) == 1


# -- TLS ----------------------------------------------------------------------------------------


@dataclass
class Pki:
    ca_pem: bytes
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    directory: Path

    @classmethod
    def make(cls, directory: Path) -> Pki:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "greenroom test CA")])
        cert = (
            _builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(cert.public_bytes(serialization.Encoding.PEM), key, cert, directory)

    def server_context(self, hostname: str, seen: list[str | None]) -> ssl.SSLContext:
        """A server context with a leaf for `hostname` (a DNS name only, no IP address)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
        cert = (
            _builder(subject, self.ca_cert.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*_pem_files(cert, key, self.directory))
        context.sni_callback = lambda _sock, name, _ctx: seen.append(name)
        return context


def _pem_files(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, directory: Path
) -> tuple[str, str]:
    name = cert.subject.rfc4514_string()
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"))


async def test_https_verifies_the_original_hostname_on_the_checked_address(pki: Pki) -> None:
    seen: list[str | None] = []
    trusting = ssl.create_default_context(cadata=pki.ca_pem.decode())
    policy = AddressPolicy(allow_private=True)
    async with (
        serve(pki.server_context("localhost", seen)) as server,
        guarded(policy, ssl_context=trusting) as tls_client,
    ):
        url = server.url("/ok", host="localhost", scheme="https")
        attempt = await tls_client.post(url, b"{}", {}, timeout=5)
        assert attempt.ok, attempt.error
        assert seen == ["localhost"]  # SNI names the host although the connection is to an IP
        assert server.requests[0].headers["host"] == f"localhost:{server.port}"


async def test_https_refuses_a_certificate_for_another_name(pki: Pki) -> None:
    seen: list[str | None] = []
    trusting = ssl.create_default_context(cadata=pki.ca_pem.decode())
    policy = AddressPolicy(allow_private=True)
    async with (
        serve(pki.server_context("other.example", seen)) as server,
        guarded(policy, ssl_context=trusting) as tls_client,
    ):
        url = server.url("/ok", host="localhost", scheme="https")
        attempt = await tls_client.post(url, b"{}", {}, timeout=5)
    assert attempt.status is None and attempt.error is not None
    assert attempt.error.startswith("TLS certificate not accepted")
    assert server.requests == []


# -- address policy -----------------------------------------------------------------------------

BLOCKED = [
    "127.0.0.1",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "0.0.0.0",
    "::1",
    "fe80::1",
    "fc00::1",
    "::ffff:127.0.0.1",
    "100.64.0.1",
    "224.0.0.1",
    "::",
    "ff02::1",
    "fd00:ec2::254",
    "100.100.100.200",
    "64:ff9b::a00:1",  # NAT64 for 10.0.0.1
    "2002:c0a8:101::1",  # 6to4 for 192.168.1.1
    "240.0.0.1",
    "192.0.2.1",
]
ALLOWED = ["93.184.216.34", "2606:4700::1111", "64:ff9b::5db8:d822", "8.8.8.8"]


def _bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address


@pytest.mark.parametrize("address", BLOCKED)
async def test_blocked_addresses(address: str) -> None:
    assert why_blocked(ipaddress.ip_address(address)) is not None
    with pytest.raises(BlockedEndpoint, match="GREENROOM_DELIVERY_ALLOW_PRIVATE"):
        check_url(f"https://{_bracketed(address)}/hook", AddressPolicy())
    with pytest.raises(BlockedEndpoint):
        await resolve("hooks.example", 443, AddressPolicy(), resolver=_fixed(address))
    check_url(f"https://{_bracketed(address)}/hook", AddressPolicy(allow_private=True))
    allowed = await resolve(
        "h.example", 443, AddressPolicy(allow_private=True), resolver=_fixed(address)
    )
    assert allowed == [ipaddress.ip_address(address)]


@pytest.mark.parametrize("address", ALLOWED)
async def test_allowed_addresses(address: str) -> None:
    assert why_blocked(ipaddress.ip_address(address)) is None
    check_url(f"https://{_bracketed(address)}/hook", AddressPolicy())
    assert await resolve("hooks.example", 443, AddressPolicy(), resolver=_fixed(address)) == [
        ipaddress.ip_address(address)
    ]


def _fixed(*addresses: str) -> Callable[[str, int], Awaitable[list[str]]]:
    async def resolver(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolver


async def test_one_blocked_answer_blocks_the_host() -> None:
    with pytest.raises(BlockedEndpoint, match=r"10\.0\.0\.1"):
        await resolve("mixed.example", 443, AddressPolicy(), resolver=_fixed("8.8.8.8", "10.0.0.1"))


async def test_localhost_is_blocked_by_default_and_allowed_when_private() -> None:
    with pytest.raises(BlockedEndpoint, match="loopback"):
        check_url("https://127.0.0.1:8443/", AddressPolicy())
    with pytest.raises(BlockedEndpoint, match="host localhost resolves to"):
        await resolve("localhost", 443, AddressPolicy())
    check_url("https://localhost/", AddressPolicy())  # a name: checked when resolved
    addresses = await resolve("localhost", 443, AddressPolicy(allow_private=True))
    assert all(ip.is_loopback for ip in addresses)


async def test_unresolvable_is_not_blocked() -> None:
    with pytest.raises(UnresolvableEndpoint) as caught:
        await resolve("nowhere.invalid", 443, AddressPolicy())
    assert not isinstance(caught.value, BlockedEndpoint)
    assert isinstance(caught.value, ConnectionError)  # classified transient: retried


def test_http_needs_allow_http() -> None:
    with pytest.raises(
        BlockedEndpoint,
        match=r"must use https \(http is allowed only with GREENROOM_DELIVERY_ALLOW_HTTP\)",
    ):
        check_url("http://hooks.example/", AddressPolicy())
    check_url("http://hooks.example/", AddressPolicy(allow_http=True))
    check_url("HTTPS://Hooks.Example:8443/x?y=1", AddressPolicy())


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://user:pass@hooks.example/", "user name or password"),
        ("https://user@hooks.example/", "user name or password"),
        ("https://@hooks.example/", "user name or password"),
        ("https:///path", "must have a host"),
        ("https://", "must have a host"),
        ("https://hooks.example:0/", "port must be between 1 and 65535"),
        ("https://hooks.example:65536/", "port must be between 1 and 65535"),
        ("https://hooks.example:abc/", "not valid"),
        ("ftp://hooks.example/", "must use https, not ftp"),
        ("file:///etc/passwd", "must use https, not file"),
        ("javascript:alert(1)", "must use https, not javascript"),
        ("hooks.example/path", "must use https"),
        ("https://hooks.example/\x00", "control characters"),
        ("https://hooks.example/a\r\nX-Injected: 1", "control characters"),
        ("https://hooks\t.example/", "control characters"),
        ("https://hooks example/", "spaces"),
        ("https://127.1/", "loopback"),
        ("https://0x7f.0.0.1/", "loopback"),
        ("https://2130706433/", "loopback"),
    ],
)
def test_invalid_urls(url: str, message: str) -> None:
    with pytest.raises(BlockedEndpoint, match=message):
        check_url(url, AddressPolicy(allow_http=True))
    assert issubclass(BlockedEndpoint, ValueError)


def test_policy_from_settings() -> None:
    assert AddressPolicy.of(load_settings()) == AddressPolicy()
    settings = load_settings(delivery_allow_http=True, delivery_allow_private=True)
    assert AddressPolicy.of(settings) == AddressPolicy(allow_http=True, allow_private=True)
