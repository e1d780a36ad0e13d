"""Errors the engine raises, and the ones workflow code raises to steer it."""

from collections.abc import Mapping, Sequence
from typing import Any


class WorkflowError(Exception):
    """Base class of the engine's errors."""


class UnknownWorkflowError(WorkflowError, LookupError):
    """No workflow is registered under that id."""


class RunNotFoundError(WorkflowError, LookupError):
    """No run has that id (or the id is not a run id at all)."""

    def __init__(self, run_id: object) -> None:
        self.run_id = run_id
        super().__init__(f"No run {run_id}")


class PayloadError(WorkflowError, ValueError):
    """A payload does not fit the workflow's input model. Nothing was written.

    `errors` holds pydantic's field errors, ready for an API response.
    """

    def __init__(self, workflow_id: str, errors: Sequence[Mapping[str, Any]]) -> None:
        self.workflow_id = workflow_id
        self.errors = errors
        fields = ", ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or '(payload)'}: {e.get('msg')}"
            for e in errors
        )
        super().__init__(f"Invalid payload for workflow {workflow_id!r}: {fields}")


class NonRetryableError(WorkflowError):
    """Raise from a step to fail it at once, whatever its retry policy says."""


class TransientError(WorkflowError):
    """A failure of the outside world that may pass (a dependency down, overloaded or
    unreachable): a step whose retry policy names a dependency retries it durably, over
    the dependency's retry horizon. Raise it, or subclass it for a domain's own errors;
    `retry_after` is how long the dependency asked to be left alone, if it said."""

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DependencyUnavailableError(WorkflowError):
    """A step's dependency stayed unavailable for its whole retry horizon: the step fails
    (and, unless the workflow handles it, the run) naming the dependency."""

    def __init__(self, name: str, *, horizon: float, attempts: int, last_error: str) -> None:
        self.name = name
        self.horizon = horizon
        self.attempts = attempts
        self.last_error = last_error
        tried = f"{attempts} attempt(s)" if attempts else "no attempt (its circuit stayed open)"
        super().__init__(
            f"{name} stayed unavailable for {_seconds_text(horizon)} (the retry horizon; "
            f"{tried}); last error: {last_error or 'none recorded'}"
        )


def _seconds_text(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


class NonDeterminismError(WorkflowError):
    """Replay asked for a different step than the one recorded at that position.

    `position` is the first diverging position, `expected` the key the history has
    there (None: nothing, the code asked for more) and `found` the key the code asked
    for (None: the code ended or suspended before reaching the recorded step).
    """

    def __init__(
        self,
        message: str,
        *,
        position: int | None = None,
        expected: str | None = None,
        found: str | None = None,
    ) -> None:
        super().__init__(message)
        self.position = position
        self.expected = expected
        self.found = found


class StepOutputError(WorkflowError, TypeError):
    """A step returned something that cannot be stored as JSON."""


class StepFailedError(WorkflowError):
    """A step exhausted its retry policy; the run fails with this error."""

    def __init__(self, key: str, cause: BaseException, attempts: int) -> None:
        self.key = key
        self.cause = cause
        self.attempts = attempts
        super().__init__(
            f"Step {key!r} failed after {attempts} attempt(s): {type(cause).__name__}: {cause}"
        )


class RunStateError(WorkflowError):
    """The run (or wait) is not in a state that allows the operation."""


class WaitNotFoundError(RunStateError, LookupError):
    """The run has no wait under that key."""


class WaitAlreadyDecidedError(RunStateError):
    """Somebody (or the timeout) resumed this wait already."""


class WaitExpiredError(RunStateError):
    """The wait's deadline has passed: the decision came too late."""


class LeaseLostError(WorkflowError):
    """Another worker took the run over, or it was cancelled, while this one executed it."""


class Suspended(BaseException):
    """Unwinds the workflow coroutine when it suspends.

    A BaseException so that `except Exception` in workflow code cannot swallow it.
    """
