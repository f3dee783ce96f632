"""Which endpoints a delivery may reach: the SSRF guard in front of every outgoing request.

A subscriber picks the URL, so without a guard a webhook could reach the worker's loopback,
the private network or a cloud metadata service. `check_url` validates a URL's shape (also used
when a subscription is created); `resolve` resolves its host once and refuses the attempt if any
address is not public. The sender then connects to an address `resolve` returned, never
resolving again, so DNS rebinding between the check and the connection is impossible.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from yarl import URL

from greenroom.errors import GreenroomError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Resolves (host, port) to address strings, as getaddrinfo would; tests inject their own.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_PRIVATE_HINT = "such endpoints are allowed only with GREENROOM_DELIVERY_ALLOW_PRIVATE"
_HTTP_HINT = "http is allowed only with GREENROOM_DELIVERY_ALLOW_HTTP"

# Metadata services outside the ranges below (169.254.169.254 and fd00:ec2::254 are in them too,
# listed so the message names them): Alibaba, Azure's wire server, Oracle.
_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "fd00:ec2::254",
        "100.100.100.200",
        "168.63.129.16",
        "192.0.0.192",
    )
)
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_LEGACY_V4 = re.compile(r"^[0-9a-fx.]+$", re.IGNORECASE)
_PORT = re.compile(r":(\d+)$")


class BlockedEndpoint(GreenroomError, ValueError):
    """The endpoint is not allowed by the address policy (a configuration problem: retrying
    cannot help). Its message describes the URL's problem without repeating the URL."""


class UnresolvableEndpoint(GreenroomError, ConnectionError):
    """The endpoint's host did not resolve. A delivery failure that may pass on retry (DNS
    outage, a record not yet published), unlike BlockedEndpoint; classified as transient."""


class _DeliverySettings(Protocol):
    @property
    def delivery_allow_http(self) -> bool: ...

    @property
    def delivery_allow_private(self) -> bool: ...


@dataclass(frozen=True)
class AddressPolicy:
    """What endpoints deliveries may use; the defaults allow only https to public addresses."""

    allow_http: bool = False
    allow_private: bool = False

    @classmethod
    def of(cls, settings: _DeliverySettings) -> AddressPolicy:
        return cls(
            allow_http=settings.delivery_allow_http,
            allow_private=settings.delivery_allow_private,
        )


def why_blocked(ip: IPAddress) -> str | None:
    """Why a non-public address is refused ("a loopback address"), or None for a public one.
    Addresses embedding an IPv4 address (IPv4-mapped, NAT64, 6to4, Teredo) are judged by it."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded(ip)
        if embedded is not None:
            kind, inner = embedded
            reason = why_blocked(inner)
            return None if reason is None else f"{reason} ({kind} {inner})"
        if ip in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        if ip.teredo is not None:
            reasons = [r for r in map(why_blocked, ip.teredo) if r is not None]
            return f"{reasons[0]} (in a Teredo address)" if reasons else None
    return _category(ip)


def _embedded(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip in _NAT64:
        return "NAT64 for", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "6to4 for", ip.sixtofour
    return None


def _category(ip: IPAddress) -> str | None:
    if ip in _METADATA:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "not a globally routable address"
    return None


def _check_ip(ip: IPAddress, policy: AddressPolicy, *, host: str | None = None) -> None:
    if policy.allow_private:
        return
    reason = why_blocked(ip)
    if reason is not None:
        subject = f"host {host} resolves to {ip}, which is" if host else f"address {ip} is"
        raise BlockedEndpoint(f"{subject} {reason}; {_PRIVATE_HINT}")


def ip_literal(host: str) -> IPAddress | None:
    """The address a URL host spells, including the legacy IPv4 forms the resolver accepts
    ("127.1", "0x7f.0.0.1", "2130706433"), or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_V4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def parse_url(url: str, policy: AddressPolicy) -> URL:
    """The URL parsed as the sender will use it, after `check_url`'s checks."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise BlockedEndpoint("the URL must not contain spaces or control characters")
    try:
        authority = urlsplit(url).netloc
    except ValueError as exc:
        raise BlockedEndpoint(f"the URL is not valid: {exc}") from None
    port = _PORT.search(authority)  # before yarl, which refuses some ports less plainly
    if port is not None and not 1 <= int(port.group(1)) <= 65535:
        raise BlockedEndpoint("the URL's port must be between 1 and 65535")
    try:
        parsed = URL(url)
    except ValueError as exc:
        raise BlockedEndpoint(f"the URL is not valid: {exc}") from None
    if parsed.scheme != "https":
        if parsed.scheme != "http":
            shown = f", not {parsed.scheme}" if parsed.scheme else ""
            raise BlockedEndpoint(f"the URL must use https{shown}")
        if not policy.allow_http:
            raise BlockedEndpoint(f"the URL must use https ({_HTTP_HINT})")
    if "@" in authority or parsed.user is not None:
        raise BlockedEndpoint("the URL must not contain a user name or password")
    if not parsed.host:
        raise BlockedEndpoint("the URL must have a host")
    literal = ip_literal(parsed.host)
    if literal is not None:
        _check_ip(literal, policy)
    return parsed


def check_url(url: str, policy: AddressPolicy) -> None:
    """Refuse (BlockedEndpoint) a URL deliveries may not use: not https (or http when allowed),
    no host, user info, a port outside 1-65535, or an IP literal the policy blocks. A host
    name is checked only when `resolve` resolves it, for each new connection."""
    parse_url(url, policy)


async def system_resolver(host: str, port: int) -> list[str]:
    """The event loop's getaddrinfo, TCP addresses only."""
    loop = asyncio.get_running_loop()
    infos: list[tuple[Any, ...]] = await loop.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


async def resolve(
    host: str, port: int, policy: AddressPolicy, *, resolver: Resolver | None = None
) -> list[IPAddress]:
    """The host's addresses, in the resolver's order, when every one is allowed; a single
    blocked address refuses the host (BlockedEndpoint), so a name mixing public and private
    answers cannot win a race. A host that does not resolve raises UnresolvableEndpoint."""
    literal = ip_literal(host)
    if literal is not None:
        _check_ip(literal, policy)
        return [literal]
    try:
        answers = await (resolver or system_resolver)(host, port)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableEndpoint(f"host {host} does not resolve: {exc}") from None
    addresses: list[IPAddress] = []
    for answer in answers:
        ip = ipaddress.ip_address(answer.split("%", 1)[0])  # drop an IPv6 scope ("%eth0")
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise UnresolvableEndpoint(f"host {host} has no addresses")
    for ip in addresses:
        _check_ip(ip, policy, host=host)
    return addresses
