"""Retry policy of a step: how many attempts, how long between them, which errors."""

import random
from dataclasses import dataclass

from .errors import NonRetryableError, StepOutputError


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    The delay before attempt n+1 is `initial_interval * backoff ** (n-1)`, capped at
    `max_interval`, then spread by ±`jitter` (a fraction) so that many runs failing
    together do not retry in lockstep. Only exceptions in `retry_on` are retried;
    `NonRetryableError` and anything in `non_retryable` fail the step at once.
    """

    max_attempts: int = 3
    initial_interval: float = 0.5
    backoff: float = 2.0
    max_interval: float = 30.0
    jitter: float = 0.2
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter is a fraction in [0, 1)")

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        if attempt >= self.max_attempts:
            return False
        if isinstance(exc, (NonRetryableError, StepOutputError, *self.non_retryable)):
            return False
        return isinstance(exc, self.retry_on)

    def delay(self, attempt: int, exc: BaseException | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based). An error that
        says when to come back (`retry_after`, e.g. from an HTTP `Retry-After`) is
        believed, within `max_interval`."""
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, (int, float)) and retry_after > 0:
            base = min(float(retry_after), self.max_interval)
            return base * (1 + random.uniform(0, self.jitter))
        base = min(self.initial_interval * self.backoff ** (attempt - 1), self.max_interval)
        return max(0.0, base * (1 + random.uniform(-self.jitter, self.jitter)))


NO_RETRY = RetryPolicy(max_attempts=1)
