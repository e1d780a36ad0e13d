"""The run lease, from take to release: which worker may execute a run now.

A run is executed by whoever holds its lease (`WorkflowRun.lease_owner` + expiry):

- **take** (`lease_take`): the run read, then one conditional UPDATE that also requires
  what was read unchanged; only a pending run, or a running one whose lease expired, can
  be taken. A duplicate delivery of the same task loses here.
- **keep** (`LeaseKeeper`): one periodic UPDATE per process renews the leases of every
  segment it has in flight, however many; on the same beat, what lives with them (the
  process's block of model-call slots, `limits.py`).
- **fence** (`lease_fenced_insert`): every step commit inserts its row only if the lease
  is still held, in the same statement; a worker that lost the run (taken over,
  cancelled) stops at its next step. A suspend is fenced by its own transition.
- **release** (`lease_release`): a worker that stops with segments unfinished hands their
  runs back (pending, queued again) so another worker continues at once.
- **expiry** (`transitions.lease_expired`): the reaper re-queues running runs whose
  worker died.

This module is the lease's policy (how long, when to renew, what a hand-back sends);
the UPDATEs themselves are `transitions.py`'s, like every change of a run's state.
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Protocol

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from workflows import observability
from workflows.engine import transitions
from workflows.engine.compiled_queries import CompiledInsert, CompiledRead, RowExists
from workflows.engine.errors import LeaseLostError
from workflows.engine.queue import run_enqueue
from workflows.models import RunStatus, StepRecord, WorkflowRun

logger = logging.getLogger(__name__)


def lease_duration() -> timedelta:
    return timedelta(seconds=settings.WORKFLOWS_LEASE_SECONDS)


def lease_token() -> str:
    """A new owner token: one per executed segment."""
    return uuid.uuid4().hex


# Read before every take: compiled once (workflows/engine/compiled_queries.py).
_run_by_id = CompiledRead(WorkflowRun, "pk")


def lease_take(run_id: uuid.UUID | str, token: str) -> WorkflowRun | None:
    """Take the run's lease with one conditional UPDATE and return the run as taken, or
    None. The run is read first: the take writes its counts from what it read, and
    requires them unchanged, so the run as taken is that read with what the take wrote
    (no second read). A pending run is taken; a running one whose lease expired is taken
    over (counted, off the common path)."""
    run = _run_by_id.first(run_id)
    if run is None:
        return None
    now = timezone.now()
    until = now + lease_duration()
    if run.status == RunStatus.PENDING:
        taken = transitions.take(run=run, token=token, until=until, now=now)
    elif run.status == RunStatus.RUNNING:
        taken = transitions.take_over(run=run, token=token, until=until, now=now)
        if taken:
            observability.lease_taken_over()
    else:
        return None
    return run if taken else None


def lease_renew(tokens: list[str]) -> int:
    """Extend every lease still held under `tokens`, in one UPDATE. Returns how many."""
    if not tokens:
        return 0
    return transitions.leases_extend(tokens=tokens, until=timezone.now() + lease_duration())


def lease_release(run_id: uuid.UUID | str, token: str) -> bool:
    """Hand a run this worker could not finish back to the queue: pending again, its
    task sent, in one transaction. Nothing happens if the lease was lost meanwhile."""
    with transaction.atomic():
        released = transitions.release(run_id=run_id, token=token, now=timezone.now())
        if released:
            run_enqueue(run_id)
    return released


# The step commit is the engine's hot path: one statement, committed on its own, that
# inserts the step only if this worker still holds the run's lease. The run's row is
# locked on PostgreSQL, so that a concurrent take-over is waited for and seen; SQLite's
# writers are serialized, and a stale read fails with SQLITE_BUSY. Compiled once (with
# Django's own value adaptation) it costs one round trip and no ORM work; through the
# ORM, with BEGIN/UPDATE/INSERT/COMMIT, it cost three to four times the commit itself
# (bench/README.md).
_step_insert_while_leased = CompiledInsert(
    StepRecord,
    only_if=RowExists(WorkflowRun, ["pk", "lease_owner"], Q(status=RunStatus.RUNNING)),
)


def lease_fenced_insert(record: StepRecord, token: str) -> None:
    """Insert a step row if, and only if, `token` still holds its run's lease."""
    if not _step_insert_while_leased.insert(record, record.run_id, token):
        raise LeaseLostError(f"Run {record.run_id} is no longer leased by this worker")


def lease_renew_own_connection(tokens: list[str]) -> int:
    """`lease_renew` from a thread of its own, on a connection it closes after: the
    renewal must not queue behind the sync steps it keeps alive (they hold the caller's
    thread inline, and may hold every thread of a worker's pool)."""
    try:
        return lease_renew(tokens)
    finally:
        connection.close()


Renew = Callable[[list[str]], Awaitable[int]]


class HeartbeatCompanion(Protocol):
    """Something leased for a process's segments that lives and dies with their leases
    (the model-call slot block, `workflows.engine.limits`)."""

    async def heartbeat(self) -> None:
        """Renew, on the keeper's beat."""

    async def idle(self) -> None:
        """The keeper's segments are all done: give back what nothing uses."""


class LeaseKeeper:
    """Renews the leases of every segment a process has in flight, in one UPDATE every
    third of the lease duration, from a task on the event loop that runs the segments.
    A segment registers its token for as long as it runs (`holding`). `renew` runs the
    UPDATE off the loop, on a thread no step can occupy (the runtime says which); by
    default where the segment's sync work runs. Companions (`renew_also`) are renewed
    on the same beat, so they expire with the process."""

    def __init__(self, renew: Renew | None = None) -> None:
        self._tokens: dict[str, uuid.UUID | str] = {}
        self._task: asyncio.Task[None] | None = None
        self._renew = renew
        self._companions: list[HeartbeatCompanion] = []

    @property
    def beating_on(self) -> asyncio.AbstractEventLoop | None:
        """The loop the renewals run on, while they run."""
        return self._task.get_loop() if self._task is not None and not self._task.done() else None

    def renew_also(self, companion: HeartbeatCompanion) -> None:
        if all(c is not companion for c in self._companions):
            self._companions.append(companion)

    @property
    def held(self) -> dict[str, uuid.UUID | str]:
        """token → run id of the segments in flight."""
        return dict(self._tokens)

    @contextmanager
    def holding(self, run_id: uuid.UUID | str, token: str) -> Iterator[None]:
        self._tokens[token] = run_id
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._renew_forever())
        try:
            yield
        finally:
            self._tokens.pop(token, None)

    async def close(self) -> None:
        """Stop renewing (the process or the inline execution is done)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _renew_forever(self) -> None:
        from workflows.engine.runtime import run_sync  # the runtime imports this module

        renew = self._renew or run_sync(lease_renew)
        interval = lease_duration().total_seconds() / 3
        while True:
            while self._tokens:
                await asyncio.sleep(interval)
                try:
                    await renew(list(self._tokens))
                except Exception:
                    logger.exception("renewing %d lease(s) failed; retrying", len(self._tokens))
                await self._each_companion("heartbeat")
            await self._each_companion("idle")
            # A segment that came in during the idle hand-back found this task running
            # and started none: keep beating for it. (No await between check and end.)
            if not self._tokens:
                return

    async def _each_companion(self, method: str) -> None:
        for companion in list(self._companions):
            try:
                await getattr(companion, method)()
            except Exception:
                logger.exception("%s of %r failed; retrying on the next beat", method, companion)
