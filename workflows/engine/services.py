"""Writes: starting, resuming, cancelling, retrying and reaping runs.

Each function is one transaction; every state change that needs a worker enqueues the
run inside that transaction (see `queue.run_enqueue`).
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from pydantic import BaseModel, ValidationError

from workflows import observability
from workflows.engine import hooks, transitions
from workflows.engine.circuits import circuit_probe_take, circuits_probe_due
from workflows.engine.errors import (
    PayloadError,
    RunStateError,
    WaitAlreadyDecidedError,
    WaitExpiredError,
    WaitNotFoundError,
)
from workflows.engine.queue import run_enqueue, runs_waiting
from workflows.engine.registry import workflow_get
from workflows.engine.transitions import lease_expired
from workflows.models import (
    ACTIVE_RUN_STATUSES,
    RETRY_WAIT,
    RunStatus,
    StepKind,
    StepRecord,
    StepStatus,
    Wait,
    WaitStatus,
    WorkflowRun,
)

logger = logging.getLogger(__name__)


def workflow_payload_validate(
    *, workflow_id: str, payload: BaseModel | dict[str, Any]
) -> BaseModel:
    """The payload as the workflow's input model, or `PayloadError` with field errors."""
    definition = workflow_get(workflow_id)
    raw = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
    try:
        return definition.input_model.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise PayloadError(workflow_id, errors) from None


def workflow_start(
    workflow_id: str, payload: BaseModel | dict[str, Any], *, run_id: UUID | None = None
) -> WorkflowRun:
    """Create a run of `workflow_id` and queue it. Nothing is written if the payload
    does not fit the workflow's input model (`PayloadError`) or the id is unknown.

    Called inside a transaction, the run and its task are that transaction's: they
    commit or roll back with it, and a database error here leaves it to roll back (no
    savepoint of its own). `run_id` (default: a new one) lets the caller's own rows name
    the run before it exists, written first in that transaction (a foreign key to the
    run is checked at commit), instead of updating them after."""
    model = workflow_payload_validate(workflow_id=workflow_id, payload=payload)
    with transaction.atomic(savepoint=False):
        run = WorkflowRun.objects.create(
            id=run_id or uuid4(), workflow_id=workflow_id, input=model.model_dump(mode="json")
        )
        run_enqueue(run.id)
    return run


def _release_wait(
    *,
    run_id: UUID | str,
    key: str,
    status: WaitStatus,
    data: dict[str, Any],
    by: AbstractBaseUser | None,
    now: datetime,
    require_before_deadline: bool,
) -> Wait:
    """Move one wait out of `waiting`, record the suspend step's result and queue the
    run, atomically. The conditional UPDATE decides races: exactly one caller wins."""
    waits = Wait.objects.filter(run__pk=run_id, key=key, status=WaitStatus.WAITING)
    if require_before_deadline:
        waits = waits.filter(deadline__gt=now)
    won = waits.update(status=status, resume_data=data, resumed_by=by, resumed_at=now)
    if not won:
        wait = Wait.objects.filter(run__pk=run_id, key=key).first()
        if wait is None:
            raise WaitNotFoundError(f"Run {run_id} has no wait {key!r}")
        if wait.status == WaitStatus.WAITING:
            raise WaitExpiredError(
                f"The wait {key!r} of run {run_id} expired at {wait.deadline:%Y-%m-%d %H:%M:%S} "
                "UTC; it can no longer be decided"
            )
        who = f" by {wait.resumed_by}" if wait.resumed_by_id else ""
        when = f" at {wait.resumed_at:%Y-%m-%d %H:%M:%S} UTC" if wait.resumed_at else ""
        raise WaitAlreadyDecidedError(
            f"The wait {key!r} of run {run_id} was already {wait.status}{who}{when}"
        )
    wait = Wait.objects.select_related("resumed_by", "run").get(run__pk=run_id, key=key)
    timed_out = status == WaitStatus.EXPIRED
    if wait.kind == StepKind.SLEEP:
        output = None
    else:
        output = {
            "data": data,
            "resumed_by": by.get_username() if by is not None else None,
            "resumed_at": now.isoformat(),
            "timed_out": timed_out,
        }
    StepRecord.objects.create(
        run_id=run_id,
        key=key,
        position=wait.position,
        kind=wait.kind,
        status=StepStatus.COMPLETED,
        input=wait.data,
        output=output,
        started_at=wait.created_at,
        finished_at=now,
    )
    transitions.resume(run_id=run_id, now=now)
    run_enqueue(run_id)
    return wait


def run_resume(
    run_id: UUID | str,
    key: str,
    data: dict[str, Any] | None = None,
    *,
    by: AbstractBaseUser | None = None,
) -> Wait:
    """Resume a run suspended at `key` with `data`.

    Only a wait still `waiting` and before its deadline can be resumed; otherwise
    `WaitAlreadyDecidedError`, `WaitExpiredError` or `WaitNotFoundError` says why.
    """
    with transaction.atomic():
        return _release_wait(
            run_id=run_id,
            key=key,
            status=WaitStatus.RESUMED,
            data=data or {},
            by=by,
            now=timezone.now(),
            require_before_deadline=True,
        )


def waits_expire(*, now: datetime | None = None) -> list[Wait]:
    """Resume every wait past its deadline with `{"data": {}, "timed_out": True}`
    (a sleep simply ends). Run by the periodic task and `manage.py expire_waits`."""
    now = now or timezone.now()
    expired = []
    due = Wait.objects.filter(status=WaitStatus.WAITING, deadline__lte=now).exclude(kind=RETRY_WAIT)
    for run_id, key in due.values_list("run_id", "key"):
        try:
            with transaction.atomic():
                expired.append(
                    _release_wait(
                        run_id=run_id,
                        key=key,
                        status=WaitStatus.EXPIRED,
                        data={},
                        by=None,
                        now=now,
                        require_before_deadline=False,
                    )
                )
        except (WaitAlreadyDecidedError, WaitExpiredError):
            continue  # decided between our SELECT and UPDATE
    retry_waits_wake(now=now)  # each worker's tick does it sooner (WORKFLOWS_WAKE_SECONDS)
    _wait_sweep_hooks_run(now=now)
    return expired


# --- steps waiting for a dependency (see `context.LiveStepRunner.run_step`) -------------


def retry_wait_release(
    *, wait_id: int, now: datetime, status: WaitStatus = WaitStatus.EXPIRED
) -> bool:
    """End a step's wait for its dependency and queue its run, atomically; the run then
    attempts the step again (nothing is recorded for the step itself). False: someone
    else released it first (the conditional UPDATE decides), or it was cancelled."""
    with transaction.atomic():
        if not Wait.objects.filter(pk=wait_id, status=WaitStatus.WAITING).update(
            status=status, resumed_at=now
        ):
            return False
        run_id = Wait.objects.values_list("run_id", flat=True).get(pk=wait_id)
        if not transitions.resume(run_id=run_id, now=now):
            return True  # cancelled meanwhile: nothing to execute
        run_enqueue(run_id)
    return True


def _dependency_waits(dependency: str) -> QuerySet[Wait]:
    return Wait.objects.filter(
        status=WaitStatus.WAITING, kind=RETRY_WAIT, data__dependency=dependency
    )


def retry_waits_wake(*, now: datetime | None = None) -> int:
    """Queue the runs whose step's next attempt is due, and hand each circuit's due probe
    to the run that has waited longest for it. Every worker process runs it every
    WORKFLOWS_WAKE_SECONDS (`runtime`), and the minute's wait sweep as well; conditional
    UPDATEs make any number of them safe. Returns how many runs it queued."""
    now = now or timezone.now()
    woken = 0
    for dependency in circuits_probe_due(now=now):
        oldest = _dependency_waits(dependency).order_by("created_at", "pk").first()
        if oldest is None:
            continue  # nobody waits: the next run that needs it probes
        if retry_wait_release(wait_id=oldest.pk, now=now, status=WaitStatus.RESUMED):
            woken += 1
            circuit_probe_take(dependency, holder=str(oldest.run_id), now=now)
    due = Wait.objects.filter(status=WaitStatus.WAITING, kind=RETRY_WAIT, deadline__lte=now)
    for wait_id in due.values_list("pk", flat=True):
        woken += retry_wait_release(wait_id=wait_id, now=now)
    return woken


def dependency_waiters_wake(*, dependency: str, now: datetime | None = None) -> int:
    """Queue every run waiting for `dependency` at once: its circuit has just closed.
    Returns how many."""
    now = now or timezone.now()
    ids = list(_dependency_waits(dependency).values_list("pk", flat=True))
    return sum(
        retry_wait_release(wait_id=wait_id, now=now, status=WaitStatus.RESUMED) for wait_id in ids
    )


def _wait_sweep_hooks_run(*, now: datetime) -> None:
    """An application's periodic work about open waits (`hooks`); one that raises is
    logged and skipped, so that it can never stop waits from expiring."""
    for hook in hooks.registry.wait_sweep_hooks:
        try:
            hook(now=now)
        except Exception:
            logger.exception("wait sweep hook %r failed", hook)


def run_cancel(run_id: UUID | str) -> WorkflowRun:
    """Cancel a pending, running or suspended run and its open waits. A worker executing
    it stops at its next step commit."""
    now = timezone.now()
    with transaction.atomic():
        cancelled = transitions.cancel(run_id=run_id, now=now)
        run = WorkflowRun.objects.get(pk=run_id)
        if not cancelled:
            raise RunStateError(f"Run {run_id} is {run.status}; only active runs can be cancelled")
        Wait.objects.filter(run=run, status=WaitStatus.WAITING).update(
            status=WaitStatus.CANCELLED, resumed_at=now
        )
    return run


def run_cancel_requested(run_id: UUID | str, *, by: AbstractBaseUser | None = None) -> WorkflowRun:
    """Cancel a run as an operator asked: through its workflow's run canceller (`hooks`)
    if it has one, else `run_cancel`."""
    workflow_id = WorkflowRun.objects.values_list("workflow_id", flat=True).get(pk=run_id)
    canceller = hooks.registry.run_cancellers.get(workflow_id)
    if canceller is None:
        return run_cancel(run_id)
    canceller(run_id, by)
    return WorkflowRun.objects.get(pk=run_id)


def run_retry(run_id: UUID | str) -> WorkflowRun:
    """Re-run a failed run from its last completed step: completed steps stay recorded
    (and are not run again), the failed step is forgotten and runs anew."""
    now = timezone.now()
    with transaction.atomic():
        retried = transitions.retry(run_id=run_id, now=now)
        run = WorkflowRun.objects.get(pk=run_id)
        if run.pruned_at is not None:  # rolls the retry back: it would start afresh
            raise RunStateError(
                f"Run {run_id}'s history was pruned; it cannot be retried (start a new run)"
            )
        if not retried:
            raise RunStateError(f"Run {run_id} is {run.status}; only failed runs can be retried")
        failed = StepRecord.objects.filter(run=run, status=StepStatus.FAILED)
        # A step that gave up on its dependency starts a new horizon.
        Wait.objects.filter(run=run, kind=RETRY_WAIT, key__in=failed.values("key")).delete()
        failed.delete()
        run_enqueue(run_id)
    return run


@dataclass(frozen=True)
class RunsRetried:
    """What `runs_retry_failed` did, or would do (`dry_run`)."""

    selected: list[WorkflowRun]
    retried: list[WorkflowRun]
    refused: list[str]  # why a chosen run was not retried (not failed, or no longer)
    dry_run: bool


def runs_retry_failed(
    *,
    workflow_id: str | None = None,
    error_contains: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    run_ids: list[UUID] | None = None,
    dry_run: bool = False,
) -> RunsRetried:
    """Retry failed runs in bulk, each as `run_retry` does: the failed runs of
    `workflow_id`, whose error contains `error_contains` (any case), that failed between
    `since` and `until`, and among `run_ids` if given (the admin's selection). With
    `dry_run`, only say which. The way out after an outage longer than the retry horizon:
    `manage.py retry_runs` and the runs admin's action both come here."""
    if workflow_id:
        workflow_get(workflow_id)  # UnknownWorkflowError for a mistyped id
    runs = WorkflowRun.objects.filter(status=RunStatus.FAILED)
    refused = []
    if run_ids is not None:
        chosen = WorkflowRun.objects.filter(pk__in=run_ids)
        refused = [
            f"Run {run.pk} is {run.status}; only failed runs can be retried"
            for run in chosen.exclude(status=RunStatus.FAILED).order_by("created_at")
        ]
        runs = runs.filter(pk__in=run_ids)
    if workflow_id:
        runs = runs.filter(workflow_id=workflow_id)
    if error_contains:
        runs = runs.filter(error__icontains=error_contains)
    if since is not None:
        runs = runs.filter(finished_at__gte=since)
    if until is not None:
        runs = runs.filter(finished_at__lte=until)
    selected = list(runs.order_by("finished_at", "created_at"))
    retried = []
    if not dry_run:
        for run in selected:
            try:
                retried.append(run_retry(run.pk))
            except RunStateError as exc:  # retried or cancelled since it was selected
                refused.append(str(exc))
        if retried:
            logger.info("retried %d failed run(s)", len(retried))
    return RunsRetried(selected=selected, retried=retried, refused=refused, dry_run=dry_run)


def run_fork(run_id: UUID | str, *, from_step: str) -> WorkflowRun:
    """Start a new run of the same workflow and input that continues from `from_step`
    under the code deployed now: the steps recorded before it (completed, or failed and
    handled by the workflow) and the waits decided before it are copied, so nothing
    before it runs again (a charge stays one charge).

    The way to recover a run that failed on a bug once the fix is deployed. The origin
    must be finished or cancelled (`RunStateError` otherwise); the fork links to it
    (`forked_from`, `forked_at_step`), and the fork hooks (`hooks`) tell the application,
    which may refuse the fork (`RunStateError`, and nothing is created).
    """
    with transaction.atomic():
        origin = WorkflowRun.objects.select_for_update().get(pk=run_id)
        if origin.status in ACTIVE_RUN_STATUSES:
            raise RunStateError(f"Run {origin.id} is {origin.status}: cancel it before forking it")
        if origin.pruned_at is not None:
            raise RunStateError(f"Run {origin.id}'s history was pruned; it cannot be forked")
        start = StepRecord.objects.filter(run=origin, key=from_step).first()
        if start is None:
            keys = ", ".join(
                StepRecord.objects.filter(run=origin)
                .order_by("position")
                .values_list("key", flat=True)
            )
            raise RunStateError(
                f"Run {origin.id} has no step {from_step!r} (its steps: {keys or 'none'})"
            )
        fork = WorkflowRun.objects.create(
            workflow_id=origin.workflow_id,
            input=origin.input,
            forked_from=origin,
            forked_at_step=from_step,
        )
        kept = StepRecord.objects.filter(run=origin, position__lt=start.position)
        StepRecord.objects.bulk_create(
            [_copy_to(fork, step, exclude=("id", "run")) for step in kept]
        )
        decided = Wait.objects.filter(run=origin, position__lt=start.position).exclude(
            status=WaitStatus.WAITING
        )
        Wait.objects.bulk_create([_copy_to(fork, wait, exclude=("id", "run")) for wait in decided])
        for hook in hooks.registry.fork_hooks:
            hook(origin=origin, fork=fork)
        run_enqueue(fork.id)
    logger.info("run %s forked from %s at step %r", fork.id, origin.id, from_step)
    return fork


def _copy_to(run: WorkflowRun, record: Any, *, exclude: tuple[str, ...]) -> Any:
    values = {
        f.attname: getattr(record, f.attname)
        for f in type(record)._meta.concrete_fields
        if f.name not in exclude
    }
    return type(record)(run=run, **values)


# The most stale pending runs one reaper call looks at (`runs_reap`).
REAP_PENDING_BATCH = 500


def runs_reap(*, now: datetime | None = None) -> list[UUID]:
    """Re-queue runs whose worker died. Returns the ids re-queued.

    - `running` with an expired lease: the worker died mid-segment.
    - `pending` for longer than WORKFLOWS_PENDING_REQUEUE_SECONDS with no task waiting
      for it in the broker (`queue.runs_waiting`): its task was lost. A cluster takes
      tasks ahead of its workers, so one killed with SIGKILL takes them with it (the ORM
      broker hands them out again only after its `retry`, 12 minutes; Redis never); a
      task is acknowledged once its worker accepted the run, before the lease is taken;
      with a broker outside the database, a task can be lost between commit and send.
      A run whose task is still waiting is simply waiting its turn, however long.

    Safe to run anywhere, any number at once (every worker's wake tick and the minute's
    schedule do): each re-queue is a conditional UPDATE that one caller wins. A task
    re-queued for a run whose first task was only slow, not lost, is harmless: only one
    of them takes the lease (`lease_take`), the other finds the run taken and skips.
    """
    now = now or timezone.now()
    stale_pending = now - timedelta(seconds=settings.WORKFLOWS_PENDING_REQUEUE_SECONDS)
    lost = Q(status=RunStatus.PENDING, updated_at__lt=stale_pending)
    dead = list(WorkflowRun.objects.filter(lease_expired(now)).values_list("pk", flat=True))
    # Bounded: each worker reaps every few seconds; a larger backlog goes over several.
    stale = list(
        WorkflowRun.objects.filter(lost)
        .order_by("updated_at")
        .values_list("pk", flat=True)[:REAP_PENDING_BATCH]
    )
    waiting = runs_waiting(stale)
    requeued = []
    for run_id in dead:
        with transaction.atomic():
            if transitions.reap(run_id=run_id, now=now):
                observability.lease_taken_over()  # a dead worker's lease, taken back
                run_enqueue(run_id)
                requeued.append(run_id)
    for run_id in stale:
        if str(run_id) in waiting:
            continue
        with transaction.atomic():
            # Still pending and still stale: only its clock restarts, so that one caller
            # re-queues it, once per WORKFLOWS_PENDING_REQUEUE_SECONDS at most.
            if WorkflowRun.objects.filter(lost, pk=run_id).update(updated_at=now):
                run_enqueue(run_id)
                requeued.append(run_id)
    if requeued:
        logger.warning("re-queued %d run(s) whose worker died: %s", len(requeued), requeued)
    return requeued
