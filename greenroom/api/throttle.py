"""Throttles of one API node: the request rate of each key, and failed authentications.

Both are token buckets kept in memory per node (a deployment of N nodes allows N times as much).
They hold at most MAX_BUCKETS buckets: callers can make up names (key ids, addresses), so full
buckets, which remember nothing, are dropped first.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time

MAX_BUCKETS = 10_000
#: How long a presented key that failed is remembered: trying it again costs no lookup. A key's
#: secret is random, so one that failed never becomes valid; this only bounds memory.
FAILED_KEY_SECONDS = 60.0


class TokenBuckets:
    """A bucket per name: `rate` tokens a second, at most `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, name: str, rate: float | None = None, *, peek: bool = False) -> float:
        """0 if a token was there (and, unless `peek`, was taken), else the seconds until one
        will be. A bucket with its own rate holds one second's worth of it."""
        rate, burst = (self.rate, self.burst) if rate is None else (rate, max(1, math.ceil(rate)))
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(name, (float(burst), now))
            tokens = min(float(burst), tokens + (now - at) * rate)
            if tokens >= 1:
                if not peek:
                    self._store(name, tokens - 1, now)
                return 0.0
            self._store(name, tokens, now)
            return (1 - tokens) / rate

    def _store(self, name: str, tokens: float, now: float) -> None:
        if len(self._buckets) >= MAX_BUCKETS and name not in self._buckets:
            # Drop the buckets that have refilled (at the default rate): they remember nothing.
            full = self.burst / self.rate
            self._buckets = {n: v for n, v in self._buckets.items() if now - v[1] < full}
            if len(self._buckets) >= MAX_BUCKETS:  # all in use: forget the older half
                by_age = sorted(self._buckets.items(), key=lambda item: item[1][1])
                self._buckets = dict(by_age[MAX_BUCKETS // 2 :])
        self._buckets[name] = (tokens, now)


class RateLimiter(TokenBuckets):
    """The request rate of each key: the node's default, or the key's own rate."""


class FailedAuth:
    """Failed authentications, counted per key id and per client address: each may fail
    `burst` times at once and `rate` times a second after that; beyond, its requests are
    refused (429) before any lookup. A key verified by this node is not held up by it."""

    def __init__(self, rate: float, burst: int) -> None:
        self._buckets = TokenBuckets(rate, burst)
        self._failed: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def wait(self, key_id: str | None, address: str | None) -> float:
        """Seconds until a request with this key id, from this address, may try to
        authenticate; 0: now."""
        waits = [self._buckets.take(name, peek=True) for name in _names(key_id, address)]
        return max(waits, default=0.0)

    def failed(self, presented: str, key_id: str | None, address: str | None, why: str) -> None:
        """Count a failure, and remember the presented key and why it failed."""
        for name in _names(key_id, address):
            self._buckets.take(name)
        now = time.monotonic()
        with self._lock:
            if len(self._failed) >= MAX_BUCKETS:
                self._failed = {k: v for k, v in self._failed.items() if v[0] > now}
                if len(self._failed) >= MAX_BUCKETS:
                    self._failed.clear()
            self._failed[_digest(presented)] = (now + FAILED_KEY_SECONDS, why)

    def known(self, presented: str) -> str | None:
        """Why this key failed lately, or None if it did not."""
        with self._lock:
            found = self._failed.get(_digest(presented))
        if found is None or found[0] < time.monotonic():
            return None
        return found[1]


def _names(key_id: str | None, address: str | None) -> list[str]:
    return [n for n in (key_id and f"key:{key_id}", address and f"addr:{address}") if n]


def _digest(presented: str) -> str:
    """Presented keys are remembered by hash: a wrong secret may be a right one mistyped."""
    return hashlib.sha256(presented.encode("utf-8", "surrogatepass")).hexdigest()
