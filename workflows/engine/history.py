"""A run's recorded steps as replay walks them, and the one home of the divergence check.

A live segment (`executor.py`) and `manage.py replay_check` (`replay.py`) both read a
run's history through a `History`, so a change that would strand a live run is reported
by both at the same position and in the same words: replay cannot drift from what a
worker does (Temporal's replayer reuses its live worker for the same reason).
"""

import uuid
from collections.abc import Iterable

from django.db.models import Q

from workflows.engine.compiled_queries import CompiledRead
from workflows.engine.errors import NonDeterminismError
from workflows.models import StepRecord, StepStatus, Wait, WorkflowRun

DIVERGENCE_HELP = (
    "Wrap the change in `if ctx.patched('<change-id>'):` so that runs started before it "
    "keep their old path, and run `manage.py replay_check` before deploying "
    "(`manage.py fork_run` restarts a failed run from a step under the new code)."
)

# The status of an open wait in a replayed history: it holds its position (the code must
# still ask for it there) but has no result yet, so the run would wait there again.
OPEN_WAIT = "waiting"

# The steps a worker replays: completed ones, and failed ones the workflow handled
# (`run_retry` deletes a failure it retries, so that step runs anew).
REPLAYED_STEP_STATUSES = (StepStatus.COMPLETED, StepStatus.FAILED)


class History:
    """The steps a run recorded, walked in order as its workflow code asks for them.

    Each `claim` takes the next position and checks that the code asks for what the run
    recorded there; `check_complete` checks, when the code returns, that it reached every
    recorded step.
    """

    def __init__(
        self,
        *,
        run_id: uuid.UUID,
        workflow_id: str,
        records: Iterable[StepRecord],
        open_waits: Iterable[Wait] = (),
    ) -> None:
        self.run_id = run_id
        self.workflow_id = workflow_id
        self.records = list(records)
        # An open wait is replayed as the step it becomes once decided (`replay_check`
        # replays suspended runs; a live segment never runs while its run waits).
        entries = self.records + [
            StepRecord(run_id=run_id, key=w.key, position=w.position, status=OPEN_WAIT)
            for w in open_waits
        ]
        self._by_key = {record.key: record for record in entries}
        self._by_position = {record.position: record for record in entries}
        self._position = 0
        self._seen: set[str] = set()

    @property
    def position(self) -> int:
        """The position the next step the code asks for takes."""
        return self._position

    def at(self, position: int) -> StepRecord | None:
        """What the run recorded at `position` (an open wait included), if anything."""
        return self._by_position.get(position)

    def claim(self, key: str) -> tuple[int, StepRecord | None]:
        """Take the next position for `key` and return its result, if the run has one
        (None: the step is new, or a wait still open, and must be carried out).

        Raises `NonDeterminismError` when the history has another key at this position,
        or has `key` at another one; `ValueError` for a key that is empty or used twice.
        """
        if not key or not isinstance(key, str):
            raise ValueError("A step key must be a non-empty string")
        if key in self._seen:
            raise ValueError(f"Step key {key!r} is used twice in run {self.run_id}")
        self._seen.add(key)
        position = self._position
        self._position += 1
        at_position = self._by_position.get(position)
        if at_position is not None and at_position.key != key:
            raise self.diverged(key, position, at_position.key)
        record = self._by_key.get(key)
        if record is not None and record.position != position:
            raise self.diverged(key, position, None)
        if record is not None and record.status == OPEN_WAIT:
            return position, None
        return position, record

    def check_complete(self) -> None:
        """When the workflow returns: a recorded step the code no longer reaches means
        it changed under the run, as much as a step asked for in the wrong place."""
        later = [p for p in self._by_position if p >= self._position]
        if later:
            unreached = self._by_position[min(later)]
            raise self.diverged(None, unreached.position, unreached.key)

    def diverged(self, key: str | None, position: int, recorded: str | None) -> NonDeterminismError:
        """The error for code that asks for `key` (None: no further step) at `position`
        where the run recorded `recorded` (None: nothing)."""
        asked = f"step {key!r}" if key else "no further step"
        there = f"{recorded!r}" if recorded else "nothing"
        return NonDeterminismError(
            f"Run {self.run_id} of workflow {self.workflow_id!r} asked for {asked} "
            f"at position {position}, but its history has {there} there: the workflow code "
            f"changed under a live run (a step added, removed, renamed or moved before "
            f"{recorded or key!r}). {DIVERGENCE_HELP}",
            position=position,
            expected=recorded,
            found=key,
        )


# Read at the start of every segment: compiled once (workflows/engine/compiled_queries.py).
_replayed_steps = CompiledRead(
    StepRecord, "run_id", where=Q(status__in=REPLAYED_STEP_STATUSES), order_by=["position"]
)


def history_load(run: WorkflowRun) -> History:
    """A run's history for a segment to replay, in one query."""
    records = _replayed_steps.all(run.id)
    return History(run_id=run.id, workflow_id=run.workflow_id, records=records)
