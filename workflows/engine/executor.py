"""Executing one segment of a run: from its start or resume point until it completes,
fails or suspends. Safe to call twice at once: the lease decides who executes.

`segment_execute` is the coroutine a worker's runtime runs, many at once (see
`runtime.py`); `run_execute` runs one inline, for synchronous mode and tests, on an
`InlineRuntime`: the same code, only sync work runs elsewhere.
"""

import asyncio
import logging
import traceback
import uuid
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connection
from django.utils import timezone

from workflows import observability
from workflows.engine import transitions
from workflows.engine.context import WorkflowContext
from workflows.engine.errors import LeaseLostError, Suspended, UnknownWorkflowError
from workflows.engine.history import History, history_load
from workflows.engine.leases import lease_release, lease_take, lease_token
from workflows.engine.redaction import redact
from workflows.engine.registry import WorkflowDefinition, workflow_get
from workflows.engine.runtime import (
    InlineRuntime,
    SegmentOutcome,
    SegmentReleased,
    SegmentRuntime,
    run_sync,
    segment_running_on,
)
from workflows.models import RETRY_WAIT, Wait, WorkflowRun

logger = logging.getLogger(__name__)


class SegmentTimeoutError(Exception):
    """A segment ran longer than WORKFLOWS_SEGMENT_TIMEOUT_SECONDS."""


def _segment_begin(
    run_id: uuid.UUID | str, token: str
) -> tuple[WorkflowRun, History, list[Wait]] | None:
    """Take the run's lease and read what the segment replays, in one trip to a sync
    thread. None: the run is not pending, or leased elsewhere."""
    run = lease_take(run_id, token)
    if run is None:
        return None
    # Every take counts an attempt, and only a segment, a decided wait (of a run that
    # suspended) or a fork writes what a segment replays. So a run's first segment (the
    # common case) reads neither its steps, unless it is a fork (which starts with its
    # origin's), nor its waits for a dependency.
    first_segment = run.attempts == 1
    if first_segment and not run.forked_at_step:
        history = History(run_id=run.id, workflow_id=run.workflow_id, records=[])
    else:
        history = history_load(run)
    retry_waits = [] if first_segment else list(Wait.objects.filter(run=run, kind=RETRY_WAIT))
    return run, history, retry_waits


async def segment_execute(run_id: uuid.UUID | str, runtime: SegmentRuntime) -> SegmentOutcome:
    """Execute a run's next segment on `runtime`. Returns what happened."""
    with segment_running_on(runtime):
        return await _segment_execute(run_id, runtime)


async def _segment_execute(run_id: uuid.UUID | str, runtime: SegmentRuntime) -> SegmentOutcome:
    token = lease_token()
    begun = await run_sync(_segment_begin)(run_id, token)
    if begun is None:
        logger.info("run %s: not pending or leased elsewhere; nothing to do", run_id)
        return SegmentOutcome.SKIPPED
    run, history, retry_waits = begun
    try:
        definition = workflow_get(run.workflow_id)
    except UnknownWorkflowError as exc:
        await run_sync(_finish_failed)(run.id, token, exc, {})
        return SegmentOutcome.FAILED

    ctx = WorkflowContext(
        run=run,
        definition=definition,
        history=history,
        lease_token=token,
        retry_waits=retry_waits,
    )
    observability.segment_started(ctx, run)
    try:
        with runtime.keeper.holding(run.id, token):
            outcome = await asyncio.wait_for(
                _segment_body(ctx, definition, run, token),
                timeout=settings.WORKFLOWS_SEGMENT_TIMEOUT_SECONDS,
            )
    except TimeoutError:
        limit = settings.WORKFLOWS_SEGMENT_TIMEOUT_SECONDS
        timeout = SegmentTimeoutError(
            f"The segment ran longer than {limit} s; retry_run continues it"
        )
        await run_sync(_finish_failed)(run.id, token, timeout, ctx.usage)
        outcome = SegmentOutcome.FAILED
        observability.segment_failed(ctx, timeout)
    observability.segment_finished(ctx, outcome)
    return outcome


async def _segment_body(
    ctx: WorkflowContext, definition: WorkflowDefinition, run: WorkflowRun, token: str
) -> SegmentOutcome:
    try:
        payload = definition.input_model.model_validate(run.input)
        result = await definition.fn(ctx, payload)
        ctx.history.check_complete()
        output = _dump_output(definition.output_model, result)
    except Suspended:
        return SegmentOutcome.SUSPENDED
    except SegmentReleased:
        released = await run_sync(lease_release)(run.id, token)
        logger.info("run %s: handed back to the queue (worker stopping)", run.id)
        return SegmentOutcome.RELEASED if released else SegmentOutcome.LEASE_LOST
    except LeaseLostError:
        logger.warning("run %s: lease lost (cancelled or taken over); stopping", run.id)
        return SegmentOutcome.LEASE_LOST
    except Exception as exc:
        logger.info("run %s failed: %s", run.id, exc)
        observability.segment_failed(ctx, exc)
        await run_sync(_finish_failed)(run.id, token, exc, ctx.usage)
        return SegmentOutcome.FAILED
    finished = await run_sync(_finish_completed)(run.id, token, output, ctx.usage)
    return SegmentOutcome.COMPLETED if finished else SegmentOutcome.LEASE_LOST


def run_execute(run_id: uuid.UUID | str) -> SegmentOutcome:
    """Execute a run's next segment inline, in this thread's transaction."""
    return async_to_sync(_execute_inline)(run_id, in_transaction=connection.in_atomic_block)


async def _execute_inline(run_id: uuid.UUID | str, *, in_transaction: bool) -> SegmentOutcome:
    runtime = InlineRuntime(in_transaction=in_transaction)
    try:
        return await segment_execute(run_id, runtime)
    finally:
        await runtime.close()


def _dump_output(model: Any, result: Any) -> Any:
    if model is not None:
        return model.model_validate(result).model_dump(mode="json")
    return None


def _finish_completed(run_id: uuid.UUID, token: str, output: Any, usage: dict[str, int]) -> bool:
    return transitions.complete(
        run_id=run_id, token=token, output=output, usage=usage, now=timezone.now()
    )


def _finish_failed(
    run_id: uuid.UUID, token: str, exc: BaseException, usage: dict[str, int]
) -> None:
    transitions.fail(
        run_id=run_id,
        token=token,
        error=redact(f"{type(exc).__name__}: {exc}"),
        error_traceback=redact("".join(traceback.format_exception(exc))),
        usage=usage,
        now=timezone.now(),
    )
