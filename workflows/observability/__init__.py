"""Metrics (Prometheus) and traces (OpenTelemetry) of the workflow engine.

The engine calls the functions below at a handful of points, one line each: a step
committed (`step_committed`, `wait_recorded`), a segment started and finished
(`segment_started`, `segment_failed`, `segment_finished`), a worker's slots changing
(`worker_slots`, `worker_started`, `worker_stopped`), a lease taken over
(`lease_taken_over`), a model answering or rate-limiting (`model_called`,
`model_rate_limited`). Nothing here knows of orders: a domain adds its own database
metrics through a metrics collector hook (`hooks.register_metrics_collector`).

- `metrics`: the process-local Prometheus metrics and the hooks that only count;
- `tracing`: OpenTelemetry set-up, span ids, and the spans of steps;
- `events`: the hooks that count and trace (steps, waits, segments, a worker stopping);
- `collector`: the database-backed metrics, read at scrape time;
- `views`: `GET /metrics`.

The engine imports this package and calls the hooks re-exported here.
"""

from workflows.observability.collector import WorkflowsCollector, metrics_registry
from workflows.observability.events import (
    segment_failed,
    segment_finished,
    segment_started,
    step_committed,
    wait_recorded,
    worker_stopped,
)
from workflows.observability.metrics import (
    lease_taken_over,
    model_called,
    model_rate_limited,
    step_retried,
    worker_slots,
    worker_started,
)
from workflows.observability.tracing import (
    _Segment,
    _tracer,
    span_id,
    trace_id,
    tracing_flush,
    tracing_reset,
)
from workflows.observability.views import metrics_view

__all__ = [
    "WorkflowsCollector",
    "_Segment",
    "_tracer",
    "lease_taken_over",
    "metrics_registry",
    "metrics_view",
    "model_called",
    "model_rate_limited",
    "segment_failed",
    "segment_finished",
    "segment_started",
    "span_id",
    "step_committed",
    "step_retried",
    "trace_id",
    "tracing_flush",
    "tracing_reset",
    "wait_recorded",
    "worker_slots",
    "worker_started",
    "worker_stopped",
]
