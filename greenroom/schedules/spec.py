"""When a schedule's slots are: a cron expression in a time zone (evaluated by cronsim, which
handles daylight saving time) or an interval from the Unix epoch plus a phase; optional start
and end; a jitter that never moves a firing past the next slot."""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from greenroom.errors import InvalidInput

#: The usual names for common cron expressions.
NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate(_MONTHS)}),
    ("day-of-week", 0, 7, {d: i for i, d in enumerate(_DAYS)}),
)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
#: Slots found at most when catching up or listing: a schedule cannot make more at once.
MAX_SLOTS = 10_000


def invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(f"{field}: {message}", errors=[{"field": field, "message": message}])


def parse_every(text: str, field: str = "every") -> float:
    """`15m`, `1h`, `90s`, `2d` or a number of seconds."""
    found = _DURATION.match(text)
    if not found:
        raise invalid(field, f"{text!r} is not a duration like 90s, 15m, 1h or 1d")
    return float(found[1]) * _UNITS[found[2]]


def cron_expression(text: str) -> str:
    """The five-field expression (a nickname replaced), checked field by field so an error
    says which field and why ("minute field: 61 is out of range 0-59")."""
    expression = NICKNAMES.get(text.strip().lower(), text.strip())
    if expression.startswith("@"):
        raise invalid("cron", f"unknown nickname {text!r} (known: {', '.join(NICKNAMES)})")
    fields = expression.split()
    if len(fields) != 5:
        order = "minute hour day-of-month month day-of-week"
        raise invalid("cron", f"needs 5 fields ({order}), not {len(fields)}")
    for value, (name, low, high, names) in zip(fields, _FIELDS, strict=True):
        _check_field(value, name, low, high, names)
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise invalid("cron", str(exc)) from None
    return expression


def _check_field(value: str, name: str, low: int, high: int, names: dict[str, int]) -> None:
    for part in value.split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            raise invalid("cron", f"{name} field: step {step!r} must be a positive number")
        if base == "*" or (name in ("day-of-month", "day-of-week") and base in ("?", "L")):
            continue
        for bound in base.split("-"):
            bound = bound.rstrip("L").split("#")[0]
            number = names.get(bound.lower()) if not bound.isdigit() else int(bound)
            if number is None:
                raise invalid("cron", f"{name} field: {bound!r} is not a number or a name")
            if not low <= number <= high:
                raise invalid("cron", f"{name} field: {number} is out of range {low}-{high}")


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        message = f"{name!r} is not an IANA time zone (like Europe/Berlin)"
        raise invalid("timezone", message) from None


@dataclass(frozen=True, kw_only=True)
class Spec:
    """A checked schedule spec: `cron` in `timezone`, or every `every` seconds from the epoch
    plus `phase`."""

    cron: str | None = None
    every: float | None = None
    phase: float = 0.0
    timezone: str = "UTC"
    start_at: float | None = None
    end_at: float | None = None
    jitter: float = 0.0

    @classmethod
    def checked(
        cls,
        *,
        cron: str | None = None,
        every: float | None = None,
        phase: float = 0.0,
        timezone: str = "UTC",
        start_at: float | None = None,
        end_at: float | None = None,
        jitter: float = 0.0,
        min_every: float = 60.0,
    ) -> Spec:
        if (cron is None) == (every is None):
            raise invalid("cron", "give a cron expression or an interval (every), one of them")
        if cron is not None:
            cron = cron_expression(cron)
        if every is not None and not every >= min_every:
            raise invalid("every", f"must be at least {min_every:g} seconds (a setting)")
        if every is not None and not 0 <= phase < every:
            raise invalid("phase", "must be from 0 to less than the interval")
        zone(timezone)
        if start_at is not None and end_at is not None and end_at <= start_at:
            raise invalid("end_at", "must be after start_at")
        if not jitter >= 0:
            raise invalid("jitter", "must not be negative")
        spec = cls(
            cron=cron,
            every=every,
            phase=phase,
            timezone=timezone,
            start_at=start_at,
            end_at=end_at,
            jitter=jitter,
        )
        if cron is not None and min_every > 60:
            # Cron's slots are a minute apart at the closest; closer than the minimum is refused.
            slots = spec.slots(datetime(2001, 1, 1, tzinfo=UTC).timestamp(), float("inf"), 50)
            closest = min((b - a for a, b in itertools.pairwise(slots)), default=min_every)
            if closest < min_every:
                raise invalid(
                    "cron", f"fires {closest:g} seconds apart: at least {min_every:g} (a setting)"
                )
        return spec

    def slot_after(self, moment: float) -> float | None:
        """The first slot strictly after `moment` (and not before start_at); None once the
        schedule has ended."""
        if self.start_at is not None and moment < self.start_at:
            moment = self.start_at - 1e-6
        if self.every is not None:
            k = (moment - self.phase) // self.every + 1
            slot = float(self.phase + k * self.every)
        else:
            assert self.cron is not None
            local = datetime.fromtimestamp(moment, zone(self.timezone))
            # cronsim starts at whole seconds: the first match at or after it, so move past.
            found = next(CronSim(self.cron, local.replace(microsecond=0)))
            slot = found.timestamp()
            if slot <= moment:
                found = next(CronSim(self.cron, found))
                slot = found.timestamp()
        if self.end_at is not None and slot > self.end_at:
            return None
        return slot

    def slots(self, after: float, until: float, limit: int = MAX_SLOTS) -> list[float]:
        """Slots after `after` up to and including `until`, at most `limit`."""
        found: list[float] = []
        moment = after
        while len(found) < limit:
            slot = self.slot_after(moment)
            if slot is None or slot > until:
                break
            found.append(slot)
            moment = slot
        return found

    def due(self, schedule_id: str, slot: float) -> float:
        """When the slot fires: the slot plus this schedule's jitter, the same for every
        scheduler (a hash of the schedule and slot), and before the next slot."""
        if not self.jitter:
            return slot
        following = self.slot_after(slot)
        room = self.jitter if following is None else min(self.jitter, (following - slot) / 2)
        digest = hashlib.sha256(f"{schedule_id}:{slot}".encode()).digest()
        return slot + room * int.from_bytes(digest[:8], "big") / 2**64
