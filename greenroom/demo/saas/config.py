"""The demo console's settings: fixed ones per server, and faults that change at run time."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from datetime import date
from typing import Any

from greenroom.demo.saas.data import DATA_DATE, DEFAULT_SECRET


@dataclass(frozen=True, kw_only=True)
class Faults:
    """Misbehaviour to inject, so connectors can be tested against a flaky, changing SaaS.

    latency_ms is added to every page; error_rate is the probability that a page answers
    HTTP 500, drawn from a random sequence seeded with `seed` (same seed, same requests, same
    failures); sessions expire session_seconds after login, existing ones included;
    changed_layout renames the users table's markup so a connector's selectors break.
    """

    latency_ms: int = 0
    error_rate: float = 0.0
    session_seconds: float = 1800.0
    changed_layout: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.latency_ms <= 60_000:
            raise ValueError("latency_ms must be between 0 and 60000")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if self.session_seconds <= 0:
            raise ValueError("session_seconds must be positive")

    def updated(self, changes: dict[str, Any]) -> Faults:
        """These faults with some fields changed; unknown fields or bad types are errors."""
        known = {f.name: f.type for f in fields(self)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(unknown)}")
        typed: dict[str, Any] = {}
        for name, value in changes.items():
            typed[name] = _coerce(name, known[name], value)
        return replace(self, **typed)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _coerce(name: str, kind: object, value: object) -> object:
    wanted = {"int": int, "float": float, "bool": bool}[str(kind)]
    if isinstance(value, bool) != (wanted is bool):
        raise ValueError(f"{name} must be a {wanted.__name__}")
    if wanted is float and isinstance(value, int | float):
        return float(value)
    if not isinstance(value, wanted):
        raise ValueError(f"{name} must be a {wanted.__name__}")
    return value


@dataclass(frozen=True, kw_only=True)
class SaasConfig:
    """One server's settings. `orgs` is how many organizations the home page lists (any valid
    slug works anyway); `users_per_org` overrides every org's generated size."""

    orgs: int = 3
    users_per_org: int | None = None
    page_size: int = 25
    secret: str = field(default=DEFAULT_SECRET, repr=False)
    faults: Faults = field(default_factory=Faults)
    #: The day last logins count back from (the data's own fixed day by default; `greenroom
    #: demo` serves today's, so that idle licenses read as idle now).
    data_date: date = DATA_DATE

    def __post_init__(self) -> None:
        if self.orgs < 1:
            raise ValueError("orgs must be at least 1")
        if self.users_per_org is not None and self.users_per_org < 1:
            raise ValueError("users_per_org must be at least 1")
        if not 1 <= self.page_size <= 500:
            raise ValueError("page_size must be between 1 and 500")
