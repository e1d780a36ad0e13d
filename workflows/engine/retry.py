"""Retry policy of a step: how many attempts, how long between them, which errors, and
which outside dependency (if any) the step waits for when that dependency is down.

Three kinds of failure:

- **permanent** (`NonRetryableError`, an HTTP 4xx other than 408 and 429, anything in
  `non_retryable`, or outside `retry_on`): the step fails at once;
- **transient failures of the outside world** (`failure_is_transient`: refused or reset
  connections, timeouts, HTTP 5xx and 429, a `TransientError`) of a step whose policy
  names a `dependency`: retried with capped exponential backoff and jitter for the
  dependency's retry horizon (an hour by default), durably once the pause outgrows a
  short in-process wait (see `context.LiveStepRunner.run_step`), and behind the
  dependency's circuit (`circuits`);
- **other retryable errors**: `max_attempts` attempts in the worker, as before.
"""

import random
from dataclasses import dataclass, replace
from typing import Any

from workflows.engine import hooks
from workflows.engine.errors import NonRetryableError, StepOutputError, TransientError


def dependency_name(dependency: str) -> str:
    """What people call it ("stripe" → "Stripe", registered in `hooks`), for every message
    about a run waiting for it (the console, the API, errors); else its id."""
    return hooks.registry.dependency_names.get(dependency, dependency)


def dependency_label(dependency: str) -> str:
    """Its name with its id when they differ ("the mail server (smtp)"), for errors an
    operator searches by either (`retry_runs --error-contains smtp`)."""
    name = dependency_name(dependency)
    return name if name.lower() == dependency.lower() else f"{name} ({dependency})"


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status an SDK's error carries (openai: `status_code`, stripe:
    `http_status`, httpx/requests: `response.status_code`)."""
    for candidate in (
        getattr(exc, "status_code", None),
        getattr(exc, "http_status", None),
        getattr(getattr(exc, "response", None), "status_code", None),
    ):
        if isinstance(candidate, int):
            return candidate
    return None


# HTTP statuses that may well be different next time (a timeout, a rate limit).
_RETRYABLE_4XX = (408, 429)


def failure_is_permanent(exc: BaseException) -> bool:
    """Whether asking again cannot help: a `NonRetryableError`, or an HTTP 4xx (the
    request itself is refused) other than 408 and 429."""
    if isinstance(exc, NonRetryableError | StepOutputError):
        return True
    status = _http_status(exc)
    return status is not None and 400 <= status < 500 and status not in _RETRYABLE_4XX


def failure_is_transient(exc: BaseException) -> bool:
    """Whether `exc` is a failure of the outside world that may pass by itself: refused,
    reset or aborted connections and timeouts (`ConnectionError`, `TimeoutError`), an
    HTTP 5xx, 408 or 429, or a `TransientError`. Never a permanent one."""
    if failure_is_permanent(exc):
        return False
    if isinstance(exc, TransientError | ConnectionError | TimeoutError):
        return True
    status = _http_status(exc)
    return status is not None and (status >= 500 or status in _RETRYABLE_4XX)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    The delay before attempt n+1 is `initial_interval * backoff ** (n-1)`, capped at
    `max_interval`, then spread by ±`jitter` (a fraction) so that many runs failing
    together do not retry in lockstep. Only exceptions in `retry_on` are retried;
    permanent failures (`failure_is_permanent`) and anything in `non_retryable` fail the
    step at once.

    `dependency` names the outside service the step calls ("stripe", "smtp", a model
    provider): its transient failures are then retried for `horizon` seconds from the
    first one (None: `WORKFLOWS_TRANSIENT_RETRY_HORIZONS` for the dependency, else
    `WORKFLOWS_TRANSIENT_RETRY_HORIZON`), and the dependency's circuit applies. A
    `{provider}` in it is filled in by the agent runtime (`named`).
    """

    max_attempts: int = 3
    initial_interval: float = 0.5
    backoff: float = 2.0
    max_interval: float = 30.0
    jitter: float = 0.2
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    non_retryable: tuple[type[BaseException], ...] = ()
    dependency: str | None = None
    horizon: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter is a fraction in [0, 1)")
        if self.horizon is not None and self.horizon <= 0:
            raise ValueError("horizon is a number of seconds above 0")

    def _retryable(self, exc: BaseException) -> bool:
        if failure_is_permanent(exc) or isinstance(exc, self.non_retryable):
            return False
        return isinstance(exc, self.retry_on)

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether attempt number `attempt` (1-based) may be followed by another one
        within `max_attempts`."""
        return attempt < self.max_attempts and self._retryable(exc)

    def transient(self, exc: BaseException) -> bool:
        """Whether `exc` is a transient failure of this policy's dependency: retried over
        the horizon, and counted by the dependency's circuit."""
        return self.dependency is not None and self._retryable(exc) and failure_is_transient(exc)

    def retry_horizon(self) -> float:
        """Seconds from a step's first transient failure after which it gives up."""
        if self.horizon is not None:
            return self.horizon
        from django.conf import settings

        per_dependency: dict[str, float] = settings.WORKFLOWS_TRANSIENT_RETRY_HORIZONS
        default = float(settings.WORKFLOWS_TRANSIENT_RETRY_HORIZON)
        return float(per_dependency.get(self.dependency or "", default))

    def named(self, **values: str) -> "RetryPolicy":
        """This policy with the placeholders of its dependency filled in."""
        if self.dependency is None or "{" not in self.dependency:
            return self
        return replace(self, dependency=self.dependency.format(**values))

    def delay(self, attempt: int, exc: BaseException | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based). An error that
        says when to come back (`retry_after`, e.g. from an HTTP `Retry-After`) is
        believed, within `max_interval`."""
        retry_after: Any = getattr(exc, "retry_after", None)
        if isinstance(retry_after, (int, float)) and retry_after > 0:
            base = min(float(retry_after), self.max_interval)
            return base * (1 + random.uniform(0, self.jitter))
        base = min(self.initial_interval * self.backoff ** (attempt - 1), self.max_interval)
        return max(0.0, base * (1 + random.uniform(-self.jitter, self.jitter)))


NO_RETRY = RetryPolicy(max_attempts=1)
