"""The engine's hooks that both count (`metrics`) and trace (`tracing`): a step
committed or a wait recorded, a segment started, failed and finished, a worker stopping.
"""

import os
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import multiprocess as prometheus_multiprocess

from workflows.engine.redaction import redact
from workflows.observability.metrics import SEGMENTS, _step_child
from workflows.observability.tracing import (
    _emit,
    _Segment,
    _segment_span_id,
    _span_of_step,
    _step_attributes,
    _tracer,
    span_id,
    trace_id,
    tracing_flush,
)

if TYPE_CHECKING:
    from workflows.engine.context import WorkflowContext
    from workflows.models import StepRecord, WorkflowRun


def worker_stopped() -> None:
    """A worker process is exiting: its live gauges go, its spans are sent."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        prometheus_multiprocess.mark_process_dead(os.getpid())
    tracing_flush()


def step_committed(ctx: "WorkflowContext", record: "StepRecord") -> None:
    """A step executed in this segment was committed (completed or failed): observe its
    duration, and send its span. Called once per step: replays do not commit."""
    started, finished = record.started_at, record.finished_at
    if started is not None and finished is not None:
        _step_child(record.kind, record.status).observe((finished - started).total_seconds())
    tracer = _tracer()
    if tracer is not None:
        _span_of_step(tracer, ctx, record)


def wait_recorded(
    ctx: "WorkflowContext", key: str, position: int, kind: str, started: datetime
) -> None:
    """A suspend (or a long sleep) was recorded and the run parked."""
    from django.utils import timezone

    finished = timezone.now()
    _step_child(kind, "waiting").observe((finished - started).total_seconds())
    tracer = _tracer()
    if tracer is None:
        return
    attributes = _step_attributes(ctx, key, kind, "waiting", position=position, attempt=1)
    _emit(
        tracer,
        name=f"{kind} {key}",
        trace_id=trace_id(ctx.run_id),
        span_id=span_id(ctx.run_id, key),
        parent_id=_segment_span_id(ctx),
        start=started,
        end=finished,
        attributes=attributes,
    )


def segment_started(ctx: "WorkflowContext", run: "WorkflowRun") -> None:
    """A segment took its run's lease and loaded the history."""
    if _tracer() is None:
        return
    ctx.observed_segment = _Segment(run.attempts, span_id(run.id, f"segment/{run.attempts}"))


def segment_failed(ctx: "WorkflowContext", exc: BaseException) -> None:
    """The run failed in this segment: its segment span carries the error."""
    segment = ctx.observed_segment
    if segment is not None:
        segment.error = exc


def segment_finished(ctx: "WorkflowContext", outcome: str) -> None:
    """The segment ended (`outcome`: completed, suspended, failed, released, lease_lost)."""
    SEGMENTS.labels(ctx.workflow_id, outcome).inc()
    segment: _Segment | None = ctx.observed_segment
    tracer = _tracer() if segment is not None else None
    if segment is None or tracer is None:
        return
    attributes: dict[str, Any] = {
        "workflow.id": ctx.workflow_id,
        "workflow.run_id": str(ctx.run_id),
        "workflow.segment": segment.number,
        "workflow.segment.outcome": outcome,
        "workflow.usage.prompt_tokens": ctx.usage.get("prompt_tokens", 0),
        "workflow.usage.completion_tokens": ctx.usage.get("completion_tokens", 0),
    }
    error = None
    if outcome == "failed":
        exc = segment.error
        error = redact(f"{type(exc).__name__}: {exc}") if exc is not None else "the run failed"
        attributes["error.type"] = type(exc).__name__ if exc is not None else "failed"
    _emit(
        tracer,
        name=f"workflow {ctx.workflow_id}",
        trace_id=trace_id(ctx.run_id),
        span_id=segment.span_id,
        parent_id=None,
        start=segment.start_ns,
        end=time.time_ns(),
        attributes=attributes,
        error=error,
        kind="consumer",
    )
