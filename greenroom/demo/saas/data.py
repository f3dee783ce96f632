"""Deterministic demo data: organizations, their users and their admin credentials.

Everything is a pure function of the organization's slug (and, for passwords, a secret), so two
servers, a connector and a test computing the same org agree without sharing any state. Any
valid slug is an organization; a few well-known slugs have fixed names and sizes for the docs.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

DEFAULT_SECRET = "greenroom-demo"
DATA_DATE = date(2025, 6, 30)
"""Last-login dates are counted back from this fixed day, not from today, to stay stable."""

TIER_COST = {"free": 0, "standard": 12, "pro": 30, "enterprise": 55}
"""Monthly cost of each license tier, in US dollars."""
TIERS = tuple(TIER_COST)
ROLES = ("admin", "member", "viewer")

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")

KNOWN_ORGS: dict[str, tuple[str, int]] = {
    "acme": ("Acme Corporation", 312),
    "globex": ("Globex", 148),
    "initech": ("Initech", 57),
    "umbrella": ("Umbrella Corporation", 205),
    "hooli": ("Hooli", 96),
    "stark": ("Stark Industries", 263),
    "wayne": ("Wayne Enterprises", 131),
    "wonka": ("Wonka Industries", 42),
    "tyrell": ("Tyrell Corporation", 178),
    "cyberdyne": ("Cyberdyne Systems", 84),
}

FIRST_NAMES = (
    "Ada", "Alan", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "John",
    "Radia", "Tim", "Katherine", "Edsger", "Hedy", "Donald", "Sophie", "Guido", "Lynn", "Bjarne",
    "Annie", "Niklaus", "Joan", "Brian", "Mary", "Leslie", "Shafi", "Whitfield", "Anita", "Vint",
)  # fmt: skip
LAST_NAMES = (
    "Lovelace", "Turing", "Hopper", "Torvalds", "Hamilton", "Thompson", "Liskov", "Ritchie",
    "Allen", "McCarthy", "Perlman", "Berners-Lee", "Johnson", "Dijkstra", "Lamarr", "Knuth",
    "Wilson", "van Rossum", "Conway", "Stroustrup", "Easley", "Wirth", "Clarke", "Kernighan",
    "Keller", "Lamport", "Goldwasser", "Diffie", "Borg", "Cerf",
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Credentials:
    email: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(email={self.email!r}, password='***')"


@dataclass(frozen=True, kw_only=True)
class User:
    id: str
    email: str
    name: str
    role: str
    tier: str
    last_login: date | None
    active: bool = True

    @property
    def monthly_cost(self) -> int:
        return TIER_COST[self.tier]


@dataclass(frozen=True, kw_only=True)
class Organization:
    slug: str
    name: str
    users: tuple[User, ...]

    @property
    def admin_email(self) -> str:
        return admin_email(self.slug)


def valid_slug(slug: str) -> bool:
    return SLUG.match(slug) is not None


def org_slugs(count: int) -> list[str]:
    """The first `count` demo organizations: the well-known ones, then org-11, org-12, …"""
    known = list(KNOWN_ORGS)
    return known[:count] + [f"org-{i}" for i in range(len(known) + 1, count + 1)]


def admin_email(org: str) -> str:
    return f"admin@{org}.example"


def admin_credentials(org: str, secret: str = DEFAULT_SECRET) -> Credentials:
    """The org's admin login: admin@{org}.example and a password derived from org and secret."""
    digest = hmac.new(secret.encode(), f"admin:{org}".encode(), hashlib.sha256).hexdigest()
    return Credentials(email=admin_email(org), password=f"gr-{digest[:16]}")


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def org_size(org: str) -> int:
    """How many users an org has by default: fixed for well-known slugs, else 20 to 300."""
    if org in KNOWN_ORGS:
        return KNOWN_ORGS[org][1]
    return _rng("size", org).randint(20, 300)


def org_name(org: str) -> str:
    if org in KNOWN_ORGS:
        return KNOWN_ORGS[org][0]
    return org.replace("-", " ").title()


@lru_cache(maxsize=256)
def organization(org: str, users: int | None = None) -> Organization:
    """The org's users as generated, before any admin action: same slug, same users."""
    if not valid_slug(org):
        raise ValueError(f"not an organization slug: {org!r}")
    count = max(1, users if users is not None else org_size(org))
    rng = _rng("users", org)
    people = [_admin(org)]
    seen = {people[0].email}
    for index in range(2, count + 1):
        person = _person(rng, org, index, seen)
        seen.add(person.email)
        people.append(person)
    return Organization(slug=org, name=org_name(org), users=tuple(people))


def _admin(org: str) -> User:
    return User(
        id="u-0001",
        email=admin_email(org),
        name="Org Admin",
        role="admin",
        tier="enterprise",
        last_login=DATA_DATE,
    )


def _person(rng: random.Random, org: str, index: int, seen: set[str]) -> User:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    local = f"{first}.{last}".lower().replace(" ", "").replace("-", "")
    email = f"{local}@{org}.example"
    suffix = 2
    while email in seen:
        email = f"{local}{suffix}@{org}.example"
        suffix += 1
    role = rng.choices(ROLES, weights=(4, 70, 26))[0]
    tier = rng.choices(TIERS, weights=(25, 40, 25, 10))[0]
    idle_days = min(400, int(rng.expovariate(1 / 30)))
    last_login = None if rng.random() < 0.08 else DATA_DATE - timedelta(days=idle_days)
    return User(
        id=f"u-{index:04d}",
        email=email,
        name=f"{first} {last}",
        role=role,
        tier=tier,
        last_login=last_login,
    )
