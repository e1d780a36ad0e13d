"""Reads of runs, steps and waits: the runs list, one run with its history, what it
spent. Nothing here writes, and nothing here formats: the console's presentation lives
in `console`. A run that is not there raises `RunNotFoundError`.
"""

from decimal import Decimal
from typing import Any
from uuid import UUID

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import BigIntegerField, Count, Prefetch, Q, QuerySet, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast

from .agents.pricing import COST_KEY, usd
from .errors import RunNotFoundError
from .models import RunStatus, StepRecord, Wait, WaitStatus, WorkflowRun

LIVE_RUN_STATUSES = (RunStatus.PENDING, RunStatus.RUNNING)
_BAD_RUN_ID = (WorkflowRun.DoesNotExist, ValueError, TypeError, DjangoValidationError)


def usage_total(usage: dict[str, Any] | None) -> int:
    """The tokens in a usage record (a step's, an agent's or a run's)."""
    usage = usage or {}
    return sum(v for k, v in usage.items() if k.endswith("_tokens") and isinstance(v, int))


def usage_cost(usage: dict[str, Any] | None) -> Decimal | None:
    """What the model calls of a usage record cost, in dollars; None when nothing was
    priced (no call, or only unpriced models)."""
    microusd = (usage or {}).get(COST_KEY)
    return usd(microusd) if microusd else None


def runs_cost_total(runs: QuerySet[WorkflowRun] | None = None) -> tuple[int, Decimal]:
    """(tokens, dollars) spent by `runs` (every run by default), summed in the database."""
    runs = WorkflowRun.objects.all() if runs is None else runs
    totals = runs.aggregate(
        prompt=Sum(Cast(KT("usage__prompt_tokens"), BigIntegerField())),
        completion=Sum(Cast(KT("usage__completion_tokens"), BigIntegerField())),
        cost=Sum(Cast(KT(f"usage__{COST_KEY}"), BigIntegerField())),
    )
    return (totals["prompt"] or 0) + (totals["completion"] or 0), usd(totals["cost"])


# --- the runs list ---------------------------------------------------------------------


def _runs_filtered(*, workflow_id: str = "", search: str = "") -> QuerySet[WorkflowRun]:
    runs = WorkflowRun.objects.all()
    if workflow_id:
        runs = runs.filter(workflow_id=workflow_id)
    search = search.strip()
    if search:
        runs = runs.filter(Q(id__istartswith=search) | Q(workflow_id__icontains=search))
    return runs


def runs_list(
    *, status: str = "", workflow_id: str = "", search: str = ""
) -> QuerySet[WorkflowRun]:
    """Runs newest first, filtered by status, workflow id, and a search that matches a
    run id prefix or part of a workflow id."""
    runs = _runs_filtered(workflow_id=workflow_id, search=search)
    if status:
        runs = runs.filter(status=status)
    return runs.order_by("-created_at")


def run_status_counts(*, workflow_id: str = "", search: str = "") -> dict[str, int]:
    """How many runs are in each status (and `all`), under the same workflow/search
    filter as the list."""
    rows = (
        _runs_filtered(workflow_id=workflow_id, search=search)
        .order_by()
        .values("status")
        .annotate(n=Count("pk"))
    )
    counts = {status.value: 0 for status in RunStatus}
    for row in rows:
        counts[row["status"]] = row["n"]
    counts["all"] = sum(counts.values())
    return counts


def run_workflow_ids() -> list[str]:
    """Every workflow id that has runs, for the list's filter."""
    return sorted(WorkflowRun.objects.order_by().values_list("workflow_id", flat=True).distinct())


# --- one run ---------------------------------------------------------------------------


def run_get_with_steps(*, run_id: UUID | str) -> WorkflowRun:
    """The run with its steps in execution order and its waits (with who resumed them),
    in three queries; `RunNotFoundError` if there is no such run (or the id is
    malformed)."""
    runs = WorkflowRun.objects.prefetch_related(
        Prefetch("steps", queryset=StepRecord.objects.order_by("position")),
        Prefetch("waits", queryset=Wait.objects.select_related("resumed_by").order_by("position")),
    )
    try:
        return runs.get(pk=run_id)
    except _BAD_RUN_ID as exc:
        raise RunNotFoundError(run_id) from exc


def run_get(*, run_id: UUID | str) -> WorkflowRun:
    """The run; `RunNotFoundError` if there is no such run (or the id is malformed)."""
    try:
        return WorkflowRun.objects.get(pk=run_id)
    except _BAD_RUN_ID as exc:
        raise RunNotFoundError(run_id) from exc


def run_steps(run: WorkflowRun) -> list[StepRecord]:
    """The run's step records in execution order."""
    return list(StepRecord.objects.filter(run=run).order_by("position"))


def run_waits(run: WorkflowRun) -> list[Wait]:
    """The run's waits, oldest first, with who resumed them."""
    return list(run.waits.select_related("resumed_by").order_by("created_at"))


def run_open_wait(waits: list[Wait]) -> Wait | None:
    """The wait a suspended run is parked on, if any."""
    return next((w for w in waits if w.status == WaitStatus.WAITING), None)
