"""Replaying recorded histories against the code as deployed, without executing anything.

`manage.py replay_check` runs this before a deploy switches over: every live run is
replayed from its history (steps return their recorded outputs; the first step that has
no record ends the replay, since a worker would execute it then), so a change that
would strand suspended runs with a non-determinism error is found before reviewers
click Approve. No step body runs, nothing is written, nothing leaves the process.

It replays with the live engine's own code (`WorkflowContext`, `StepContext` and the
`History` with its divergence check); only its `StepRunner` differs, one that runs
nothing. So it cannot judge a run otherwise than a worker would.

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
from datetime import timedelta
from itertools import islice
from typing import Any, NoReturn, Protocol, TypedDict, cast

from django.db.models import Prefetch

from workflows.engine.context import StepCall, WorkflowContext
from workflows.engine.errors import NonDeterminismError, StepFailedError, UnknownWorkflowError
from workflows.engine.history import REPLAYED_STEP_STATUSES, History
from workflows.engine.registry import workflow_get
from workflows.models import (
    ACTIVE_RUN_STATUSES,
    StepKind,
    StepRecord,
    Wait,
    WaitStatus,
    WorkflowRun,
)

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


class ReplayStepRunner:
    """The runner that runs nothing: the first step or wait the history has no result
    for ends the replay, since a worker would carry it out from there. A patch marker
    decided on the way stays unwritten: only a live runner's commits write them."""

    async def run_step(self, call: StepCall) -> NoReturn:
        raise _ReplayEnd

    async def wait(
        self, key: str, position: int, kind: StepKind, data: dict[str, Any], window: timedelta
    ) -> NoReturn:
        raise _ReplayEnd  # still waiting: the run would suspend here again


class _PrefetchedRun(Protocol):
    """A run as `runs_replay_check` loads it: its `Prefetch(..., to_attr=...)` lists."""

    replay_steps: list[StepRecord]
    replay_waits: list[Wait]


class _RunFields(TypedDict):
    run_id: uuid.UUID
    workflow_id: str
    status: str


def _history(run: WorkflowRun) -> History:
    """The steps a worker would replay, and each open wait as the step it becomes when
    decided."""
    prefetched = cast(_PrefetchedRun, run)
    return History(
        run_id=run.id,
        workflow_id=run.workflow_id,
        records=prefetched.replay_steps,
        open_waits=prefetched.replay_waits,
    )


async def _replay(run: WorkflowRun) -> ReplayResult:
    result: _RunFields = {"run_id": run.id, "workflow_id": run.workflow_id, "status": run.status}
    try:
        ctx = WorkflowContext(
            run=run,
            definition=workflow_get(run.workflow_id),
            history=_history(run),
            lease_token="",
            runner=ReplayStepRunner(),
        )
        payload = ctx.definition.input_model.model_validate(run.input)
        try:
            await ctx.definition.fn(ctx, payload)
        except (_ReplayEnd, StepFailedError):  # new steps from here, or the recorded failure
            return ReplayResult(**result, ok=True)
        ctx.history.check_complete()
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
    # A pruned run has no history left to replay, and can never run again.
    runs = WorkflowRun.objects.filter(status__in=list(statuses), pruned_at__isnull=True)
    runs = runs.order_by("created_at")
    if workflow_id:
        runs = runs.filter(workflow_id=workflow_id)
    steps = StepRecord.objects.filter(status__in=REPLAYED_STEP_STATUSES).order_by("position")
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
