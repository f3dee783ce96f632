"""Retry policies shared by steps and workflows: attempts, exponential backoff with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from greenroom.errors import ConfigError, PermanentError
from greenroom.failures import classify

if TYPE_CHECKING:
    from greenroom.model import QueueInfo


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    max_attempts: int = 3
    initial_delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.2
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    no_retry_on: tuple[type[BaseException], ...] = ()
    #: Error classes (see greenroom.failures) that may retry; permanent ones never do.
    retry_classes: frozenset[str] = frozenset({"transient", "unknown"})

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ConfigError("retry delays must not be negative")
        if self.backoff < 1:
            raise ConfigError("backoff must be at least 1 (1 means a constant delay)")
        if not 0 <= self.jitter <= 1:
            raise ConfigError("jitter must be between 0 and 1")

    @classmethod
    def of_queue(cls, queue: QueueInfo | None) -> RetryPolicy:
        """A queue's default policy, for workflows that declare none: no retry unless set."""
        if queue is None or queue.max_attempts is None:
            return NO_RETRY
        return cls(
            max_attempts=queue.max_attempts,
            initial_delay=1.0 if queue.retry_initial_delay is None else queue.retry_initial_delay,
            backoff=queue.retry_backoff or 2.0,
            max_delay=60.0 if queue.retry_max_delay is None else queue.retry_max_delay,
        )

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether a failure on `attempt` (1-based) gets another attempt."""
        if attempt >= self.max_attempts or isinstance(error, PermanentError):
            return False
        if isinstance(error, self.no_retry_on):
            return False
        if classify(error).value not in self.retry_classes:
            return False
        return isinstance(error, self.retry_on)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed `attempt` (1-based), jittered by ±jitter."""
        base = min(self.initial_delay * self.backoff ** (attempt - 1), self.max_delay)
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(base, 0.0)


NO_RETRY = RetryPolicy(max_attempts=1)
