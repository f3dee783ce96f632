"""Compact daily activity: which days a user was active, over the last `WINDOW_DAYS` of them.

One bit per UTC day (day number `int(t // 86400)`), newest day at bit 0, so a user's half year of
activity fits in 23 bytes and the baseline can read gaps between active days without a table of
events. The window follows the newest active day: marking a newer day shifts the bits up and drops
what falls out of the window; a day older than the window is ignored, since it can no longer
change a verdict (thresholds are capped well inside the window).
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW_DAYS = 180
DAY = 86400.0
_MASK = (1 << WINDOW_DAYS) - 1
_BYTES = (WINDOW_DAYS + 7) // 8


def day_of(t: float) -> int:
    """The UTC day number of a unix time; every day-based rule uses this one rounding."""
    return int(t // DAY)


@dataclass(frozen=True)
class Activity:
    """Days a user was active, the last WINDOW_DAYS of them.

    Bit i set = active on day `last_day - i`; `last_day` means something only when bits != 0.
    """

    bits: int = 0
    last_day: int = 0

    def mark(self, day: int) -> Activity:
        if not self.bits:
            return Activity(1, day)
        if day > self.last_day:
            shifted = ((self.bits << (day - self.last_day)) | 1) & _MASK
            return Activity(shifted, day)
        offset = self.last_day - day
        if offset >= WINDOW_DAYS or self.bits >> offset & 1:
            return self
        return Activity(self.bits | 1 << offset, self.last_day)

    def days(self) -> list[int]:
        """The active days, oldest first."""
        digits = format(self.bits, "b")  # the oldest day's bit first
        first = self.last_day - len(digits) + 1
        days = []
        i = digits.find("1")
        while i >= 0:
            days.append(first + i)
            i = digits.find("1", i + 1)
        return days

    def gaps(self) -> list[int]:
        """Days from each active day to the next, oldest first: the runs of inactive days
        between them, read from the bits' digits."""
        return [len(run) + 1 for run in format(self.bits, "b").split("1")[1:-1]]

    def latest(self) -> int | None:
        return self.last_day if self.bits else None

    def count(self, first_day: int, last_day: int) -> int:
        """Active days in [first_day, last_day]; days outside the window count as inactive."""
        if not self.bits:
            return 0
        low = max(first_day, self.last_day - WINDOW_DAYS + 1)
        high = min(last_day, self.last_day)
        if high < low:
            return 0
        span = (self.bits >> (self.last_day - high)) & ((1 << (high - low + 1)) - 1)
        return span.bit_count()

    def to_bytes(self) -> bytes:
        return self.bits.to_bytes(_BYTES, "little")

    @classmethod
    def from_bytes(cls, data: bytes | None, last_day: int | None) -> Activity:
        """Read what `to_bytes` wrote; bits without a last day cannot be placed, so are refused."""
        bits = int.from_bytes(data, "little") & _MASK if data else 0
        if not bits:
            return cls()
        if last_day is None:
            raise ValueError("activity bits need the day they end on")
        return cls(bits, last_day)
