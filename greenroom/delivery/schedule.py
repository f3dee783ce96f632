"""When a failed delivery is tried again: the Standard Webhooks schedule, with jitter."""

from __future__ import annotations

import random
from collections.abc import Sequence

#: Seconds before each attempt: the first at once, the eighth and last about 27 h later. The
#: default of the `delivery_retry_delays` setting.
RETRY_DELAYS = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
#: Each delay varies by up to this fraction, so retries of many deliveries spread out.
JITTER = 0.1
#: The longest wait a receiver's Retry-After can ask for.
MAX_RETRY_AFTER = 36000.0


def next_delay(
    attempts: int,
    retry_after: float | None = None,
    rng: random.Random | None = None,
    delays: Sequence[float] = RETRY_DELAYS,
) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones; None when the schedule
    (`delays`, the seconds before each attempt) has ended. A Retry-After longer than the
    schedule's delay is honoured."""
    if attempts >= len(delays):
        return None
    delay = delays[attempts] * (1 + (rng or random).uniform(-JITTER, JITTER))
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay
