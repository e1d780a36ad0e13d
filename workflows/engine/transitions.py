"""Every change of a run's status and lease, and which ones are legal.

This module is the only writer of `WorkflowRun.status`, `lease_owner` and
`lease_expires_at` (tests/workflows/test_transitions.py fails otherwise). Each named
transition is one conditional UPDATE, filtered on the statuses it may leave and, where
the lease matters, on the lease: a caller that lost a race moves nothing and is told so
(0 rows), never overwrites a state it did not see. What to do around a transition (queue
the run, renew the lease on a timer, raise `LeaseLostError`) is the caller's policy:
`leases.py`, `executor.py`, `context.py`, `services.py`.

A run holds a lease exactly while it is `running`: taking sets it, every move out of
`running` clears it. A new run (`workflow_start`, `run_fork`) is inserted `pending`; no
UPDATE creates one.
"""

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Q

from workflows.engine.compiled_queries import CompiledUpdate
from workflows.models import RunStatus, WorkflowRun

RunId = uuid.UUID | str


class Lease(enum.Enum):
    """What a transition's UPDATE requires of the run's lease."""

    ANY = "any"  # not looked at
    HELD = "held"  # `lease_owner` is the caller's token
    EXPIRED = "expired"  # its worker stopped renewing it


class Transition(enum.StrEnum):
    TAKE = "take"
    TAKE_OVER = "take_over"
    SUSPEND = "suspend"
    COMPLETE = "complete"
    FAIL = "fail"
    RELEASE = "release"
    REAP = "reap"
    RESUME = "resume"
    RETRY = "retry"
    CANCEL = "cancel"


@dataclass(frozen=True)
class RunTransition:
    sources: tuple[RunStatus, ...]
    target: RunStatus
    lease: Lease
    why: str


_P, _R, _S = RunStatus.PENDING, RunStatus.RUNNING, RunStatus.SUSPENDED
RUN_TRANSITIONS: dict[Transition, RunTransition] = {
    Transition.TAKE: RunTransition((_P,), _R, Lease.ANY, "a worker takes a queued run"),
    Transition.TAKE_OVER: RunTransition(
        (_R,), _R, Lease.EXPIRED, "a worker takes a run whose worker died"
    ),
    Transition.SUSPEND: RunTransition(
        (_R,), _S, Lease.HELD, "the run waits (suspend, long sleep, a dependency down)"
    ),
    Transition.COMPLETE: RunTransition((_R,), RunStatus.COMPLETED, Lease.HELD, "it returned"),
    Transition.FAIL: RunTransition((_R,), RunStatus.FAILED, Lease.HELD, "it raised"),
    Transition.RELEASE: RunTransition(
        (_R,), _P, Lease.HELD, "its worker stops and hands it back to the queue"
    ),
    Transition.REAP: RunTransition((_R,), _P, Lease.EXPIRED, "the reaper re-queues it"),
    Transition.RESUME: RunTransition((_S,), _P, Lease.ANY, "its wait was decided or is due"),
    Transition.RETRY: RunTransition((RunStatus.FAILED,), _P, Lease.ANY, "an operator retries"),
    Transition.CANCEL: RunTransition(
        (_P, _R, _S), RunStatus.CANCELLED, Lease.ANY, "an operator cancels it"
    ),
}
"""Each named transition: the statuses it may leave, the one it enters, its lease test."""

RUN_STATUS_MOVES: dict[RunStatus, frozenset[RunStatus]] = {
    source: frozenset(t.target for t in RUN_TRANSITIONS.values() if source in t.sources)
    for source in RunStatus
}
"""From-status → the statuses a run may move to; any other move is refused."""


def lease_expired(now: datetime) -> Q:
    """Running runs whose worker stopped renewing: taken over, or reaped."""
    return Q(status=RunStatus.RUNNING, lease_expires_at__lt=now)


def _move_keys(transition: RunTransition) -> list[str]:
    """What a transition's UPDATE matches exactly besides the statuses it may leave: the
    run, the caller's lease where it must hold it, and for a take the attempts the taker
    read (a take by another worker since then wins)."""
    keys = ["pk"]
    if transition.lease is Lease.HELD:
        keys.append("lease_owner")
    if transition.target == RunStatus.RUNNING:
        keys.append("attempts")
    return keys


# Each transition's UPDATE, its SQL compiled once (workflows/engine/compiled_queries.py):
# the moves of every segment. A take-over's and a reap's hold the time: not compiled.
_COMPILED_MOVES = {
    name: CompiledUpdate(
        WorkflowRun, _move_keys(transition), where=Q(status__in=transition.sources)
    )
    for name, transition in RUN_TRANSITIONS.items()
    if transition.lease is not Lease.EXPIRED
}


def _move_written(
    name: Transition,
    *,
    run_id: RunId,
    now: datetime,
    token: str = "",
    read_attempts: int | None = None,
    **fields: Any,
) -> dict[str, Any] | None:
    """The one conditional UPDATE of a transition, built from its row of the table: what
    it wrote (its status, the time, `fields`, the lease cleared on every move out of
    `running`), or None if it matched no row."""
    transition = RUN_TRANSITIONS[name]
    if transition.target != RunStatus.RUNNING:
        fields.update(lease_owner="", lease_expires_at=None)
    values = {"status": transition.target, "updated_at": now, **fields}
    matched = {"pk": run_id, "lease_owner": token, "attempts": read_attempts}
    keys = {key: matched[key] for key in _move_keys(transition)}
    if transition.lease is Lease.EXPIRED:
        allowed = Q(status__in=transition.sources, **keys) & lease_expired(now)
        written = WorkflowRun.objects.filter(allowed).update(**values)
    else:
        written = _COMPILED_MOVES[name].update(*keys.values(), **values)
    return values if written else None


def _move(name: Transition, *, run_id: RunId, now: datetime, **kwargs: Any) -> bool:
    """`_move_written`: whether it moved the run."""
    return _move_written(name, run_id=run_id, now=now, **kwargs) is not None


def _taken(run: WorkflowRun, *, token: str, until: datetime, now: datetime) -> dict[str, Any]:
    """What a take writes, from the run as the taker read it."""
    return {
        "lease_owner": token,
        "lease_expires_at": until,
        "attempts": run.attempts + 1,
        "started_at": run.started_at or now,
    }


def _take(
    name: Transition, *, run: WorkflowRun, token: str, until: datetime, now: datetime
) -> bool:
    fields = _taken(run, token=token, until=until, now=now)
    written = _move_written(name, run_id=run.pk, now=now, read_attempts=run.attempts, **fields)
    if written is None:
        return False
    # The UPDATE matched the attempts read, so the row is `run` with what it wrote: the
    # taker goes on with it, no second read.
    for field, value in written.items():
        setattr(run, field, value)
    return True


def take(*, run: WorkflowRun, token: str, until: datetime, now: datetime) -> bool:
    """pending → running, leased to `token` until `until`; `run` as read just before (if
    another worker took it since, this take moves nothing). Taken, `run` is the row as
    it now is."""
    return _take(Transition.TAKE, run=run, token=token, until=until, now=now)


def take_over(*, run: WorkflowRun, token: str, until: datetime, now: datetime) -> bool:
    """running (lease expired) → running, leased to `token` until `until`; `run` as read
    just before (if another worker took it since, this take moves nothing). Taken,
    `run` is the row as it now is."""
    return _take(Transition.TAKE_OVER, run=run, token=token, until=until, now=now)


def leases_extend(*, tokens: list[str], until: datetime) -> int:
    """Extend every lease still held under `tokens` (no status change). Returns how many."""
    return WorkflowRun.objects.filter(lease_owner__in=tokens, status=RunStatus.RUNNING).update(
        lease_expires_at=until
    )


def suspend(*, run_id: RunId, token: str, usage: dict[str, int], now: datetime) -> bool:
    """running → suspended, if `token` still holds the lease."""
    return _move(Transition.SUSPEND, run_id=run_id, token=token, now=now, usage=usage)


def complete(
    *, run_id: RunId, token: str, output: Any, usage: dict[str, int], now: datetime
) -> bool:
    """running → completed, if `token` still holds the lease."""
    return _move(
        Transition.COMPLETE,
        run_id=run_id,
        token=token,
        now=now,
        output=output,
        usage=usage,
        finished_at=now,
    )


def fail(
    *,
    run_id: RunId,
    token: str,
    error: str,
    error_traceback: str,
    usage: dict[str, int],
    now: datetime,
) -> bool:
    """running → failed, if `token` still holds the lease."""
    return _move(
        Transition.FAIL,
        run_id=run_id,
        token=token,
        now=now,
        error=error,
        error_traceback=error_traceback,
        usage=usage,
        finished_at=now,
    )


def release(*, run_id: RunId, token: str, now: datetime) -> bool:
    """running → pending, if `token` still holds the lease."""
    return _move(Transition.RELEASE, run_id=run_id, token=token, now=now)


def reap(*, run_id: RunId, now: datetime) -> bool:
    """running (lease expired) → pending."""
    return _move(Transition.REAP, run_id=run_id, now=now)


def resume(*, run_id: RunId, now: datetime) -> bool:
    """suspended → pending."""
    return _move(Transition.RESUME, run_id=run_id, now=now)


def retry(*, run_id: RunId, now: datetime) -> bool:
    """failed → pending, its error forgotten."""
    return _move(
        Transition.RETRY,
        run_id=run_id,
        now=now,
        error="",
        error_traceback="",
        finished_at=None,
    )


def cancel(*, run_id: RunId, now: datetime) -> bool:
    """pending, running or suspended → cancelled."""
    return _move(Transition.CANCEL, run_id=run_id, now=now, finished_at=now)
