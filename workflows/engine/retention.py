"""Retention: the history of finished runs is deleted, in short batches, once it is old.

A run's steps and waits are its history (what replay and the trace page read); they go
when the run finished longer ago than WORKFLOWS_RETENTION_HOURS, or when it is not
among the WORKFLOWS_RETENTION_ROWS most recently finished runs (either threshold prunes;
0 turns one off). The run's row stays as a tombstone: its outcome, usage and times, with
`pruned_at` saying the trace is gone. Only completed, failed and cancelled runs are
pruned, and only those the application that owns them lets go (`hooks`: a retention
veto per workflow, asked for a whole batch at once); before the history goes, the
application's archiver copies what it keeps for good.

Deletion runs from a django-q2 schedule (every 5 minutes, `manage.py prune_runs` by
hand) in batches of WORKFLOWS_RETENTION_BATCH runs, each its own short transaction of a
fixed number of statements (select and lock the batch, ask the hooks, one DELETE of the
steps, one of the waits, one UPDATE of the runs), with a pause as long as the batch
took between two batches, so that the writes of live runs always get the database in
between; a pass stops after WORKFLOWS_RETENTION_PASS_SECONDS (like DBOS's global
timeout) and the next one goes on from there.
"""

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TextIO
from uuid import UUID

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import Model, Q, QuerySet
from django.utils import timezone

from workflows.engine import hooks
from workflows.models import AgentContext, RunStatus, StepRecord, Wait, WorkflowRun

logger = logging.getLogger(__name__)

FINISHED_RUN_STATUSES = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)
"""What retention may prune: a run in any other status may still move."""

PAUSE_MAX_SECONDS = 1.0
"""The longest pause between two batches (the pause is as long as the batch took)."""


@dataclass(frozen=True)
class RetentionPolicy:
    """Which finished runs' history goes: finished before `now - older_than`, or not
    among the `keep_rows` most recently finished (None: that threshold is off); only
    `workflow_id`'s runs if given."""

    older_than: timedelta | None = None
    keep_rows: int | None = None
    workflow_id: str | None = None

    @property
    def prunes_anything(self) -> bool:
        return self.older_than is not None or self.keep_rows is not None


def retention_policy_configured() -> RetentionPolicy:
    """The policy of the settings (WORKFLOWS_RETENTION_HOURS and _ROWS; 0 is off)."""
    hours = settings.WORKFLOWS_RETENTION_HOURS
    rows = settings.WORKFLOWS_RETENTION_ROWS
    return RetentionPolicy(
        older_than=timedelta(hours=hours) if hours > 0 else None,
        keep_rows=rows if rows > 0 else None,
    )


@dataclass
class PruneReport:
    """What a pass pruned (or, with `dry_run`, would prune)."""

    dry_run: bool
    pruned: list[UUID] = field(default_factory=list)
    kept: list[UUID] = field(default_factory=list)  # vetoed by their application
    steps_deleted: int = 0
    waits_deleted: int = 0
    batches: int = 0
    out_of_time: bool = False  # the pass's time budget ran out before the end


def _finished(policy: RetentionPolicy) -> QuerySet[WorkflowRun]:
    runs = WorkflowRun.objects.filter(status__in=FINISHED_RUN_STATUSES, finished_at__isnull=False)
    return runs.filter(workflow_id=policy.workflow_id) if policy.workflow_id else runs


def _cutoff(policy: RetentionPolicy, now: datetime) -> datetime | None:
    """Runs finished before this are pruned: the later of the two thresholds."""
    cutoffs = []
    if policy.older_than is not None:
        cutoffs.append(now - policy.older_than)
    if policy.keep_rows is not None:
        newest = _finished(policy).order_by("-finished_at").values_list("finished_at", flat=True)
        boundary = newest[policy.keep_rows - 1 : policy.keep_rows].first()
        if boundary is not None:
            cutoffs.append(boundary)
    return max(cutoffs) if cutoffs else None


def runs_prunable(*, policy: RetentionPolicy, now: datetime | None = None) -> QuerySet[WorkflowRun]:
    """The finished runs whose history the policy lets go, before the applications'
    vetoes, oldest first."""
    cutoff = _cutoff(policy, now or timezone.now())
    if cutoff is None:
        return WorkflowRun.objects.none()
    return (
        _finished(policy)
        .filter(pruned_at__isnull=True, finished_at__lt=cutoff)
        .order_by("finished_at", "id")
    )


def _vetoed(batch: list[tuple[UUID, str]]) -> set[UUID]:
    """The runs of the batch their application keeps. A veto that fails keeps all of
    its workflow's runs: history is never deleted on a guess."""
    kept: set[UUID] = set()
    by_workflow: dict[str, list[UUID]] = {}
    for run_id, workflow_id in batch:
        by_workflow.setdefault(workflow_id, []).append(run_id)
    for workflow_id, run_ids in by_workflow.items():
        veto = hooks.registry.retention_vetoes.get(workflow_id)
        if veto is None:
            continue
        try:
            kept |= set(veto(run_ids)) & set(run_ids)
        except Exception:
            logger.exception("retention veto of %s failed; its runs are kept", workflow_id)
            kept |= set(run_ids)
    return kept


def _fields(obj: Model, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields if f.name not in skip
    }


def runs_history_export(*, run_ids: list[UUID], out: TextIO) -> None:
    """One JSON line per run: the run, its steps, its waits and the agent contexts its
    model calls name, all that `manage.py prune_runs --export` archives."""
    steps: dict[UUID, list[StepRecord]] = {}
    for step in StepRecord.objects.filter(run_id__in=run_ids).order_by("run_id", "position"):
        steps.setdefault(step.run_id, []).append(step)
    waits: dict[UUID, list[Wait]] = {}
    for wait in Wait.objects.filter(run_id__in=run_ids).order_by("run_id", "position"):
        waits.setdefault(wait.run_id, []).append(wait)
    digests = {
        str(s.input["context"])
        for run_steps in steps.values()
        for s in run_steps
        if isinstance(s.input, dict) and s.input.get("context")
    }
    contexts = dict(
        AgentContext.objects.filter(digest__in=digests).values_list("digest", "content")
    )
    for run in WorkflowRun.objects.filter(pk__in=run_ids).order_by("finished_at", "id"):
        run_steps = steps.get(run.pk, [])
        named = {s.input.get("context") for s in run_steps if isinstance(s.input, dict)}
        record = {
            "run": _fields(run, ("lease_owner",)),
            "steps": [_fields(s, ("run",)) for s in run_steps],
            "waits": [_fields(w, ("run",)) for w in waits.get(run.pk, [])],
            "agent_contexts": {d: c for d, c in contexts.items() if d in named},
        }
        out.write(json.dumps(record, cls=DjangoJSONEncoder) + "\n")


def _prune_batch(
    *,
    policy: RetentionPolicy,
    cutoff: datetime,
    after: tuple[datetime, UUID] | None,
    batch_size: int,
    now: datetime,
    dry_run: bool,
    export: TextIO | None,
    report: PruneReport,
) -> tuple[datetime, UUID] | None:
    """Prune the next batch after `after` in one transaction; the position of its last
    run, or None when there is none left."""
    runs = _finished(policy).filter(pruned_at__isnull=True, finished_at__lt=cutoff)
    if after is not None:
        runs = runs.filter(Q(finished_at__gt=after[0]) | Q(finished_at=after[0], id__gt=after[1]))
    runs = runs.order_by("finished_at", "id")
    with transaction.atomic():
        if not dry_run:
            # Locked for the batch: a retry or fork of one of them waits for the commit
            # and then finds it pruned; a second pass skips them.
            runs = runs.select_for_update(skip_locked=True)
        batch = list(runs.values_list("id", "workflow_id", "finished_at")[:batch_size])
        if not batch:
            return None
        kept = _vetoed([(run_id, workflow_id) for run_id, workflow_id, _ in batch])
        pruned = [run_id for run_id, _, _ in batch if run_id not in kept]
        report.kept += [run_id for run_id, _, _ in batch if run_id in kept]
        report.batches += 1
        if not dry_run and pruned:
            if export is not None:
                runs_history_export(run_ids=pruned, out=export)
            by_workflow: dict[str, list[UUID]] = {}
            for run_id, workflow_id, _ in batch:
                if run_id not in kept:
                    by_workflow.setdefault(workflow_id, []).append(run_id)
            for workflow_id, run_ids in by_workflow.items():
                archiver = hooks.registry.history_archivers.get(workflow_id)
                if archiver is not None:
                    archiver(run_ids)
            # StepRecord and Wait have nothing pointing at them: one DELETE each.
            report.steps_deleted += StepRecord.objects.filter(run_id__in=pruned).delete()[0]
            report.waits_deleted += Wait.objects.filter(run_id__in=pruned).delete()[0]
            WorkflowRun.objects.filter(pk__in=pruned).update(pruned_at=now)
        report.pruned += pruned
    last_id, _, last_finished = batch[-1]
    assert last_finished is not None  # selected on finished_at
    return last_finished, last_id


def runs_prune(
    *,
    policy: RetentionPolicy,
    batch_size: int | None = None,
    time_budget: float | None = None,
    dry_run: bool = False,
    export: TextIO | None = None,
    now: datetime | None = None,
    pause: Callable[[float], None] = time.sleep,
) -> PruneReport:
    """Prune the history of the runs `policy` lets go, oldest first, in batches of
    `batch_size` runs (WORKFLOWS_RETENTION_BATCH), each one short transaction, pausing
    between two as long as the last one took; stop starting batches after
    `time_budget` seconds (WORKFLOWS_RETENTION_PASS_SECONDS). With `export`, every
    pruned run's history is written there first (`runs_history_export`); with
    `dry_run`, nothing is written and the report says what would go."""
    batch_size = batch_size or settings.WORKFLOWS_RETENTION_BATCH
    budget = settings.WORKFLOWS_RETENTION_PASS_SECONDS if time_budget is None else time_budget
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    now = now or timezone.now()
    report = PruneReport(dry_run=dry_run)
    cutoff = _cutoff(policy, now)
    if cutoff is None:
        return report
    ends_at = time.monotonic() + budget
    after: tuple[datetime, UUID] | None = None
    while True:
        if time.monotonic() >= ends_at:
            report.out_of_time = True
            break
        started = time.monotonic()
        after = _prune_batch(
            policy=policy,
            cutoff=cutoff,
            after=after,
            batch_size=batch_size,
            now=now,
            dry_run=dry_run,
            export=export,
            report=report,
        )
        if after is None:
            break
        if not dry_run:
            pause(min(time.monotonic() - started, PAUSE_MAX_SECONDS))
    if report.pruned and not dry_run:
        logger.info(
            "pruned the history of %d run(s) (%d steps, %d waits) in %d batch(es); %d kept",
            len(report.pruned),
            report.steps_deleted,
            report.waits_deleted,
            report.batches,
            len(report.kept),
        )
    return report


def runs_prune_configured() -> PruneReport:
    """One pass of the configured policy: what the schedule runs."""
    return runs_prune(policy=retention_policy_configured())
