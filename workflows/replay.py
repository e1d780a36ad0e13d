"""Replaying recorded histories against the code as deployed, without executing anything.

`manage.py replay_check` runs this before a deploy switches over: every live run is
replayed from its history (steps return their recorded outputs; the first step that has
no record ends the replay, since a worker would execute it then), so a change that
would strand suspended runs with a non-determinism error is found before reviewers
click Approve. No step body runs, nothing is written, nothing leaves the process.

```python
for result in runs_replay_check(statuses=ACTIVE_RUN_STATUSES):
    if not result.ok:
        print(result.run_id, result.position, result.expected, result.found)
```
"""

import asyncio
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol, TypedDict, cast

from django.db.models import Prefetch

from . import serialization
from .context import StepContext, WorkflowContext, _return_annotation
from .errors import (
    NonDeterminismError,
    NonRetryableError,
    StepFailedError,
    UnknownWorkflowError,
)
from .models import (
    ACTIVE_RUN_STATUSES,
    StepKind,
    StepRecord,
    StepStatus,
    Wait,
    WaitStatus,
    WorkflowRun,
)
from .registry import workflow_get

BATCH_SIZE = 500


class _ReplayEnd(BaseException):
    """The history is used up: from here a worker would execute new steps."""


@dataclass(frozen=True)
class ReplayResult:
    run_id: uuid.UUID
    workflow_id: str
    status: str
    ok: bool
    position: int | None = None
    expected: str | None = None  # the key the history has at `position`
    found: str | None = None  # the key the deployed code asks for there
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "run_id": str(self.run_id)}


class _ReplayStepContext(StepContext):
    """Steps answer from the history; the first one without a record ends the replay."""

    async def _run_traced(self, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        _, record = self._claim(key)
        if record is None or record.status == _OPEN_WAIT:
            raise _ReplayEnd
        if record.status == StepStatus.FAILED:  # a failure the workflow handled
            raise StepFailedError(key, NonRetryableError(record.error), record.attempt)
        return serialization.load(record.output, _return_annotation(fn), record.output_type)

    async def _wait(self, key: str, kind: StepKind, data: Any, window: Any) -> Any:
        _, record = self._claim(key)
        if record is None or record.status == _OPEN_WAIT:
            raise _ReplayEnd  # still waiting: the run would suspend here again
        return record.output

    def _patch_decision(self, change_id: str, *, deprecated: bool) -> bool:
        decision = super()._patch_decision(change_id, deprecated=deprecated)
        self._pending_markers.clear()  # nothing is written
        return decision


class _ReplayContext(WorkflowContext):
    def __init__(self, *, run: WorkflowRun, history: list[StepRecord]) -> None:
        super().__init__(
            run=run, definition=workflow_get(run.workflow_id), history=history, lease_token=""
        )
        self.step = _ReplayStepContext(self, history)


# The status of an open wait in a replayed history: the step it becomes once decided.
_OPEN_WAIT = "waiting"


class _PrefetchedRun(Protocol):
    """A run as `runs_replay_check` loads it: its `Prefetch(..., to_attr=...)` lists."""

    replay_steps: list[StepRecord]
    replay_waits: list[Wait]


class _RunFields(TypedDict):
    run_id: uuid.UUID
    workflow_id: str
    status: str


def _history(run: WorkflowRun) -> list[StepRecord]:
    """The steps a worker would replay (completed, and failed ones the workflow handled),
    and each open wait as the step it becomes when decided."""
    prefetched = cast(_PrefetchedRun, run)
    history = list(prefetched.replay_steps)
    history += [
        StepRecord(run_id=run.id, key=w.key, position=w.position, status=_OPEN_WAIT)
        for w in prefetched.replay_waits
    ]
    return history


async def _replay(run: WorkflowRun) -> ReplayResult:
    result: _RunFields = {"run_id": run.id, "workflow_id": run.workflow_id, "status": run.status}
    try:
        ctx = _ReplayContext(run=run, history=_history(run))
        payload = ctx.definition.input_model.model_validate(run.input)
        try:
            await ctx.definition.fn(ctx, payload)
        except (_ReplayEnd, StepFailedError):  # new steps from here, or the recorded failure
            return ReplayResult(**result, ok=True)
        unreached = ctx.step._unreached()
        if unreached is not None:
            raise ctx.step._diverged(None, unreached.position, unreached.key)
    except NonDeterminismError as exc:
        return ReplayResult(
            **result,
            ok=False,
            position=exc.position,
            expected=exc.expected,
            found=exc.found,
            error=str(exc),
        )
    except UnknownWorkflowError as exc:
        return ReplayResult(**result, ok=False, error=str(exc))
    except Exception as exc:
        # The deployed code cannot even replay the recorded part (an input that no longer
        # validates, an output its new type refuses): as fatal for the run as a divergence.
        return ReplayResult(**result, ok=False, error=f"{type(exc).__name__}: {exc}")
    return ReplayResult(**result, ok=True)


def _batches(ids: Iterable[uuid.UUID], size: int) -> Iterator[list[uuid.UUID]]:
    iterator = iter(ids)
    while batch := list(islice(iterator, size)):
        yield batch


def runs_replay_check(
    *,
    workflow_id: str | None = None,
    statuses: Iterable[str] = ACTIVE_RUN_STATUSES,
    batch_size: int = BATCH_SIZE,
) -> Iterator[ReplayResult]:
    """Replay every run in `statuses` (of `workflow_id`) against the deployed code. One
    query for the runs, then one for the steps and one for the waits per batch."""
    runs = WorkflowRun.objects.filter(status__in=list(statuses)).order_by("created_at")
    if workflow_id:
        runs = runs.filter(workflow_id=workflow_id)
    steps = StepRecord.objects.filter(
        status__in=[StepStatus.COMPLETED, StepStatus.FAILED]
    ).order_by("position")
    waits = Wait.objects.filter(status=WaitStatus.WAITING)
    loop = asyncio.new_event_loop()
    try:
        for ids in _batches(list(runs.values_list("pk", flat=True)), batch_size):
            batch = (
                WorkflowRun.objects.filter(pk__in=ids)
                .order_by("created_at")
                .prefetch_related(
                    Prefetch("steps", queryset=steps, to_attr="replay_steps"),
                    Prefetch("waits", queryset=waits, to_attr="replay_waits"),
                )
            )
            for run in batch:
                yield loop.run_until_complete(_replay(run))
    finally:
        loop.close()
