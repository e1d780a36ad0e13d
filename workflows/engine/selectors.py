"""Reads of runs, steps and waits: the runs list, one run with its history, what it
spent. Nothing here writes, and nothing here formats: the console's presentation lives
in `console`. A run that is not there raises `RunNotFoundError`.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import BigIntegerField, Count, Prefetch, Q, QuerySet, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.utils import timezone

from workflows.engine import hooks
from workflows.engine.circuits import circuit_probe_at
from workflows.engine.errors import RunNotFoundError
from workflows.engine.pricing import COST_KEY, usd
from workflows.engine.retry import dependency_name
from workflows.models import (
    RETRY_WAIT,
    Circuit,
    CircuitState,
    RunStatus,
    StepRecord,
    Wait,
    WaitStatus,
    WorkflowRun,
)

logger = logging.getLogger(__name__)

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


RUN_GROUP_MAIN = ""
"""The runs of no registered group (`hooks.RunGroup`): what lists show by default."""
RUN_GROUP_ALL = "all"


def run_group_choices() -> list[tuple[str, str]]:
    """(key, label) of every run group a list may show: the main runs, each registered
    group, and all runs."""
    groups = [(g.key, g.label) for g in hooks.registry.run_groups.values()]
    return [(RUN_GROUP_MAIN, "Main runs"), *groups, (RUN_GROUP_ALL, "All runs")]


def _runs_in_group(runs: QuerySet[WorkflowRun], group: str) -> QuerySet[WorkflowRun]:
    groups = hooks.registry.run_groups
    if group == RUN_GROUP_ALL:
        return runs
    if group == RUN_GROUP_MAIN:
        grouped = [wid for g in groups.values() for wid in g.workflow_ids]
        return runs.exclude(workflow_id__in=grouped) if grouped else runs
    if group not in groups:
        raise ValueError(f"Unknown run group {group!r}; known: {', '.join(groups) or 'none'}")
    return runs.filter(workflow_id__in=groups[group].workflow_ids)


def _search_q(search: str) -> Q:
    found = Q(id__istartswith=search) | Q(workflow_id__icontains=search)
    for name, lookup in hooks.registry.run_searches.items():
        try:
            found |= Q(pk__in=lookup(search))
        except Exception:
            logger.exception("run search %r failed for %r", name, search)
    return found


def _runs_filtered(
    *, workflow_id: str = "", search: str = "", group: str = RUN_GROUP_ALL
) -> QuerySet[WorkflowRun]:
    runs = WorkflowRun.objects.all()
    if workflow_id:
        runs = runs.filter(workflow_id=workflow_id)
    else:  # a workflow asked for by id is shown whatever its group
        runs = _runs_in_group(runs, group)
    search = search.strip()
    if search:
        runs = runs.filter(_search_q(search))
    return runs


def runs_list(
    *, status: str = "", workflow_id: str = "", search: str = "", group: str = RUN_GROUP_ALL
) -> QuerySet[WorkflowRun]:
    """Runs newest first, filtered by status, workflow id, run group (`RUN_GROUP_MAIN`,
    a registered group's key, or `RUN_GROUP_ALL`), and a search that matches a run id
    prefix, part of a workflow id, or what an application's run search finds (an
    order id, a customer id). `ValueError` for an unknown group."""
    runs = _runs_filtered(workflow_id=workflow_id, search=search, group=group)
    if status:
        runs = runs.filter(status=status)
    return runs.order_by("-created_at")


def run_status_counts(
    *, workflow_id: str = "", search: str = "", group: str = RUN_GROUP_ALL
) -> dict[str, int]:
    """How many runs are in each status (and `all`), under the same workflow, group and
    search filter as the list."""
    rows = (
        _runs_filtered(workflow_id=workflow_id, search=search, group=group)
        .order_by()
        .values("status")
        .annotate(n=Count("pk"))
    )
    counts = {status.value: 0 for status in RunStatus}
    for row in rows:
        counts[row["status"]] = row["n"]
    counts["all"] = sum(counts.values())
    return counts


def run_status_counts_by_group() -> dict[str, dict[str, int]]:
    """Runs by status for the main runs (key `RUN_GROUP_MAIN`) and for each registered
    group, in one query."""
    groups = hooks.registry.run_groups
    group_of = {wid: g.key for g in groups.values() for wid in g.workflow_ids}
    result = {key: dict.fromkeys(RunStatus.values, 0) for key in [RUN_GROUP_MAIN, *groups]}
    rows = (
        WorkflowRun.objects.order_by().values_list("workflow_id", "status").annotate(n=Count("pk"))
    )
    for workflow_id, status, n in rows:
        counts = result[group_of.get(workflow_id, RUN_GROUP_MAIN)]
        counts[status] = counts.get(status, 0) + n
    return result


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


# --- runs waiting for a dependency -------------------------------------------------------


@dataclass(frozen=True)
class WaitingFor:
    """A run parked until its step's next attempt at a dependency that is down."""

    dependency: str
    name: str  # as people call it (a dependency name hook, `hooks`)
    step: str
    attempt: int  # the number of the next attempt
    next_at: datetime  # when it comes (the next probe, while the circuit is open)
    circuit_open: bool
    since: datetime  # the step's first failure
    gives_up_at: datetime  # the end of its retry horizon
    error: str


def retry_waits_open() -> QuerySet[Wait]:
    """Open waits of steps for their dependency (for a `Prefetch` of a run's `waits`)."""
    return Wait.objects.filter(status=WaitStatus.WAITING, kind=RETRY_WAIT)


def waiting_for_of(wait: Wait, *, now: datetime | None = None) -> WaitingFor | None:
    """What an open wait of a step for its dependency says, or None for any other wait."""
    if wait.kind != RETRY_WAIT or wait.status != WaitStatus.WAITING:
        return None
    now = now or timezone.now()
    data = wait.data or {}
    dependency = str(data.get("dependency", ""))
    circuit_open = bool(data.get("circuit"))
    next_at = wait.deadline
    probe_at = circuit_probe_at(dependency) if circuit_open else None
    if probe_at is not None:
        next_at = min(max(probe_at, now), wait.deadline)
    first = data.get("first_failed_at")
    return WaitingFor(
        dependency=dependency,
        name=dependency_name(dependency),
        step=wait.key,
        attempt=int(data.get("attempts", 0)) + 1,
        next_at=next_at,
        circuit_open=circuit_open,
        since=datetime.fromisoformat(first) if first else wait.created_at,
        gives_up_at=wait.deadline if circuit_open else _horizon_end(data, wait),
        error=str(data.get("error", "")),
    )


def _horizon_end(data: dict[str, Any], wait: Wait) -> datetime:
    first, horizon = data.get("first_failed_at"), data.get("horizon")
    if not first or not isinstance(horizon, int | float):
        return wait.deadline
    return datetime.fromisoformat(first) + timedelta(seconds=horizon)


def run_waiting_for(run: WorkflowRun) -> WaitingFor | None:
    """What the run waits for, if it is parked until a step's next attempt; from the
    `retry_waits` prefetch (`retry_waits_open`) or the run's prefetched waits when the
    caller made one."""
    if run.status != RunStatus.SUSPENDED:
        return None
    waits = getattr(run, "retry_waits", None)
    if waits is None and "waits" in getattr(run, "_prefetched_objects_cache", {}):
        waits = list(run.waits.all())  # `run_get_with_steps` fetched them all
    if waits is None:
        waits = list(retry_waits_open().filter(run=run))
    return next((w for w in map(waiting_for_of, waits) if w is not None), None)


def runs_waiting_longest(*, limit: int = 5) -> list[tuple[UUID, WaitingFor]]:
    """The runs that have waited longest for a dependency (`ops_status`)."""
    waits = retry_waits_open().order_by("created_at", "pk")[:limit]
    return [(w.run_id, info) for w in waits if (info := waiting_for_of(w)) is not None]


def runs_waiting_by_dependency() -> dict[str, int]:
    """How many runs wait for each dependency (one `GROUP BY` over the open waits)."""
    rows = retry_waits_open().order_by().values_list(KT("data__dependency")).annotate(n=Count("pk"))
    return {str(dependency): n for dependency, n in rows}


@dataclass(frozen=True)
class DependencyStatus:
    """A dependency that is not simply fine: its circuit, and the runs waiting for it."""

    dependency: str
    name: str
    state: str
    consecutive_failures: int
    opened_at: datetime | None
    probe_at: datetime | None
    last_error: str
    waiting_runs: int


def dependencies_troubled() -> list[DependencyStatus]:
    """Every dependency whose circuit is not closed, or that runs wait for."""
    waiting = runs_waiting_by_dependency()
    circuits = {c.dependency: c for c in Circuit.objects.all()}
    troubled = sorted(
        {d for d, c in circuits.items() if c.state != CircuitState.CLOSED} | set(waiting)
    )
    statuses = []
    for dependency in troubled:
        circuit = circuits.get(dependency)
        statuses.append(
            DependencyStatus(
                dependency=dependency,
                name=dependency_name(dependency),
                state=circuit.state if circuit else CircuitState.CLOSED,
                consecutive_failures=circuit.consecutive_failures if circuit else 0,
                opened_at=circuit.opened_at if circuit else None,
                probe_at=circuit.probe_at if circuit else None,
                last_error=circuit.last_error if circuit else "",
                waiting_runs=waiting.get(dependency, 0),
            )
        )
    return statuses
