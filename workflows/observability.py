"""Metrics (Prometheus) and traces (OpenTelemetry) of the workflow engine.

The engine calls the functions below at a handful of points, one line each: a step
committed (`step_committed`, `wait_recorded`), a segment started and finished
(`segment_started`, `segment_failed`, `segment_finished`), a worker's slots changing
(`worker_slots`, `worker_started`, `worker_stopped`), a lease taken over
(`lease_taken_over`), a model answering or rate-limiting (`model_called`,
`model_rate_limited`). Nothing here knows of orders: a domain adds its own database
metrics through a metrics collector hook (`hooks.register_metrics_collector`).

## Metrics: where each value comes from, and why

`GET /metrics` (`metrics_view`) answers in the Prometheus text format, with
`Authorization: Bearer <METRICS_TOKEN>`. Without a valid token it answers 401 (with
`WWW-Authenticate: Bearer`); when `METRICS_TOKEN` is unset it answers 404, as if the
endpoint did not exist.

Two sources, because a deployment is several web processes (gunicorn) and several worker
processes (qcluster), and a scrape reaches one web process:

1. **Process-local** values are counted where they happen, in whichever process, with
   prometheus-client's *multiprocess mode*: each process writes its values to memory-mapped
   files in `PROMETHEUS_MULTIPROC_DIR` (set and created by the settings at start-up, before
   prometheus-client is imported), and a scrape merges every process's files. An
   observation is an in-memory write (a few microseconds, no database, no lock shared
   between processes), so the step hot path can afford it:

   - `workflows_step_duration_seconds{kind,status}` (histogram): `step_committed`, when
     a step's row is committed, completed or failed (`WorkflowContext._commit_step`), and
     `wait_recorded`, when a suspend or a long sleep is recorded (status `waiting`). A
     replayed step is not committed again, so it is never observed twice.
   - `workflows_segments_total{workflow,outcome}` (counter): `segment_finished`
     (completed, suspended, failed, released, lease_lost).
   - `workflows_worker_runs_in_flight`, `workflows_worker_free_slots` (gauges, one series
     per worker `pid`, mode `liveall`: a worker's series go when it is marked dead):
     `worker_slots`, when a segment takes or frees a slot (`WorkerRuntime.submit`,
     `_finished`). Only worker processes have them.
   - `workflows_lease_takeovers_total` (counter): `lease_take` took a *running* run whose
     lease had expired (its worker died).
   - `workflows_model_calls_total{provider,model}`,
     `workflows_model_tokens_total{provider,model,type}` (counters): `model_called`, where
     the provider answered (`_AgentLoop._complete`). Only executed calls: a replayed `llm`
     step never reaches the provider, and a call whose step could not commit was still paid.
   - `workflows_model_rate_limited_total{provider,model}` (counter): `model_rate_limited`,
     on every 429 a provider answered.
   - `workflows_step_retries_total{dependency,mode}` (counter): `step_retried`, when a
     step whose policy names a dependency failed transiently and will try again, in the
     worker (`inline`) or after a durable wait (`durable`).

   Multiprocess mode merges the processes of one host (one directory). On a host that
   runs only `qcluster`, run a web process too (bound to localhost is enough) and scrape
   it, or its workers' values are not seen (docs/deploy.md).

2. **Database-backed** values are read when scraped, by collectors (`WorkflowsCollector`
   here; the domain's registered in `hooks`), one bounded query each. They describe
   the cluster, not a process, so no process could count them (runs are created in web
   processes and finished in workers, and a restart would lose a process's count):

   - `workflows_runs{workflow,status}`: one `GROUP BY workflow_id, status` over the runs
     (as many rows as workflows x statuses; a scan of the runs table, so keep the scrape
     interval at 15 s or more).
   - `workflows_queue_depth`: `workflows.queue.queue_depth()` (the broker's own count).
   - `workflows_circuit_state{dependency,state}`: 1 for each dependency's circuit state
     (closed, open, half_open), 0 for the others; `workflows_circuit_consecutive_failures
     {dependency}`; `workflows_runs_waiting_for_dependency{dependency}`: runs parked
     until their step's next attempt (the circuits table, and one `GROUP BY` over the
     open waits).
   - `workflows_metrics_collector_up{collector}`: 1, or 0 when that collector's query
     failed (logged; the scrape still answers with everything else).

   Every web process reports the same database values; with several hosts scraped, take
   them from one (`max by (...)`).

## Traces

With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are exported over OTLP (HTTP/protobuf,
`<endpoint>/v1/traces`, or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is) by a
`BatchSpanProcessor`. If the host application installed a `TracerProvider`
(`opentelemetry.trace.set_tracer_provider`), that one is used instead, with its own
processors and exporters (and then even without the endpoint). Otherwise tracing is
off: each hook costs one check, and nothing of OpenTelemetry is imported. The provider
is set up lazily in each process on first use, so a forked django-q2 worker builds its
own after the fork.

- A run is one trace: its trace id *is* the run id (the UUID's 128 bits), so a trace is
  found by run id.
- A span per run segment (a root span, `workflow <id>`, with the segment number and its
  outcome), per step, per model call (`chat <model>`, gen_ai.* attributes: provider,
  models, tokens, finish reason) and per tool call (`execute_tool <name>`); an agent's
  step (`invoke_agent <agent>`) is the parent of its model and tool calls, other steps
  are children of the segment that executed them.
- Span ids are derived from the run id and the step key (a segment's from the run id and
  its number): `span_id(run_id, key)`. Nothing is emitted for a replayed step: a span is
  emitted only when a step's row is committed, which happens once per step whatever the
  number of replays, so a resumed run never sends a step twice, and a child can name its
  parent before the parent is sent (an agent's span is sent after its model calls, maybe
  from a later segment). The ids reach the SDK through `_DerivedIds`, an `IdGenerator`
  set on this module's own tracer (the host's other tracers keep theirs); with a
  provider that is not the SDK's, ids are that provider's own.
- Spans are built after the fact, with the step's recorded start and end times, in the
  thread that committed the step: no span is open while user code runs.
"""

import hashlib
import hmac
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric

from . import hooks
from .redaction import redact

if TYPE_CHECKING:
    from .agents.types import ModelResponse
    from .context import WorkflowContext
    from .models import StepRecord, WorkflowRun
    from .runtime import WorkerRuntime

logger = logging.getLogger(__name__)

# --- process-local metrics --------------------------------------------------------------

# Steps take from a millisecond (a no-op commit) to minutes (a model call waiting out 429s).
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

STEP_DURATION = Histogram(
    "workflows_step_duration_seconds",
    "Duration of executed steps (first attempt to commit, retries included), by kind and status.",
    ["kind", "status"],
    buckets=STEP_BUCKETS,
)
SEGMENTS = Counter(
    "workflows_segments",
    "Run segments executed, by workflow and outcome.",
    ["workflow", "outcome"],
)
LEASE_TAKEOVERS = Counter(
    "workflows_lease_takeovers",
    "Leases taken over: a running run whose worker stopped renewing its lease.",
)
MODEL_CALLS = Counter(
    "workflows_model_calls",
    "Model calls answered by the provider (replayed steps are not calls).",
    ["provider", "model"],
)
MODEL_TOKENS = Counter(
    "workflows_model_tokens",
    "Tokens of answered model calls, by type (prompt, completion).",
    ["provider", "model", "type"],
)
MODEL_RATE_LIMITED = Counter(
    "workflows_model_rate_limited",
    "429 answers from model providers.",
    ["provider", "model"],
)
STEP_RETRIES = Counter(
    "workflows_step_retries",
    "Retries of steps after a transient failure of their dependency, in the worker "
    "(inline) or after a durable wait (durable).",
    ["dependency", "mode"],
)

# One child per label set, kept here: `labels()` takes a lock and builds a tuple.
_step_children: dict[tuple[str, str], Any] = {}


def _step_child(kind: str, status: str) -> Any:
    child = _step_children.get((kind, status))
    if child is None:
        child = _step_children[(kind, status)] = STEP_DURATION.labels(kind, status)
    return child


# The per-worker gauges exist only in worker processes (created by the first
# `worker_slots`), so that web processes report no slots at all rather than zero.
_worker_gauges: tuple[Any, Any] | None = None
_worker_gauges_lock = threading.Lock()


def _gauges() -> tuple[Any, Any]:
    global _worker_gauges
    if _worker_gauges is None:
        with _worker_gauges_lock:
            if _worker_gauges is None:
                _worker_gauges = (
                    Gauge(
                        "workflows_worker_runs_in_flight",
                        "Run segments in flight in a worker process.",
                        registry=None,
                        multiprocess_mode="liveall",
                    ),
                    Gauge(
                        "workflows_worker_free_slots",
                        "Free slots of a worker process (WORKFLOWS_CONCURRENCY minus in flight).",
                        registry=None,
                        multiprocess_mode="liveall",
                    ),
                )
    return _worker_gauges


# --- engine hooks: metrics ----------------------------------------------------------------


def worker_slots(runtime: "WorkerRuntime") -> None:
    """A segment took or freed a slot of this worker process."""
    in_flight, free = _gauges()
    busy = runtime.in_flight
    in_flight.set(busy)
    free.set(runtime.concurrency - busy)


def worker_started(runtime: "WorkerRuntime") -> None:
    """A worker process started its runtime (after the fork)."""
    worker_slots(runtime)


def worker_stopped() -> None:
    """A worker process is exiting: its live gauges go, its spans are sent."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        prometheus_multiprocess.mark_process_dead(os.getpid())
    tracing_flush()


def lease_taken_over() -> None:
    LEASE_TAKEOVERS.inc()


def model_called(provider: str, model: str, response: "ModelResponse") -> "ModelResponse":
    """A provider answered a model call (never called on replay). Returns `response`."""
    MODEL_CALLS.labels(provider, model).inc()
    usage = response.usage
    MODEL_TOKENS.labels(provider, model, "prompt").inc(usage.prompt_tokens)
    MODEL_TOKENS.labels(provider, model, "completion").inc(usage.completion_tokens)
    return response


def model_rate_limited(provider: str, model: str) -> None:
    MODEL_RATE_LIMITED.labels(provider, model).inc()


def step_retried(dependency: str, *, durable: bool) -> None:
    """A step failed transiently at `dependency` and will be attempted again."""
    STEP_RETRIES.labels(dependency, "durable" if durable else "inline").inc()


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


# --- engine hooks: segments ----------------------------------------------------------------


class _Segment:
    """What a segment's span needs, kept on the context while it runs."""

    __slots__ = ("agent_starts", "error", "number", "span_id", "start_ns")

    def __init__(self, number: int, span: int) -> None:
        self.number = number
        self.span_id = span
        self.start_ns = time.time_ns()
        self.error: BaseException | None = None
        # An agent's span is sent when its step commits, after its model and tool calls:
        # it starts where its first call in this segment started.
        self.agent_starts: dict[str, datetime] = {}


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


def _segment_span_id(ctx: "WorkflowContext") -> int | None:
    segment = ctx.observed_segment
    return segment.span_id if segment is not None else None


# --- span ids -----------------------------------------------------------------------------


def trace_id(run_id: uuid.UUID | str) -> int:
    """A run's trace id: the run id itself, as 128 bits."""
    return run_id.int if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id)).int


def span_id(run_id: uuid.UUID | str, key: str) -> int:
    """The span id of step `key` of a run (a segment's key is `segment/<n>`): the same
    on every process and replay."""
    digest = hashlib.blake2b(f"{run_id}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


def agent_key_of(key: str, kind: str) -> str | None:
    """The agent step that owns a model call (`<agent>/llm/<n>`) or a tool call
    (`<agent>/tool/<n>/<name>`: names have no `/`)."""
    if kind == "llm":
        agent, sep, _ = key.rpartition("/llm/")
        return agent if sep else None
    if kind == "tool":
        parts = key.rsplit("/", 3)
        return parts[0] if len(parts) == 4 and parts[1] == "tool" else None
    return None


# --- tracing: the provider of this process -----------------------------------------------


class _TracingState:
    __slots__ = ("owned", "pid", "provider", "tracer")

    def __init__(self, pid: int, tracer: Any, provider: Any, owned: bool) -> None:
        self.pid = pid
        self.tracer = tracer
        self.provider = provider
        self.owned = owned


_tracing: _TracingState | None = None
_tracing_lock = threading.Lock()


def _tracer() -> Any:
    """This process's tracer, or None when tracing is off (the common case: one check)."""
    state = _tracing
    if state is not None and state.pid == os.getpid():
        return state.tracer
    return _tracing_setup()


def _otlp_endpoint() -> str:
    return getattr(settings, "OTEL_EXPORTER_OTLP_ENDPOINT", "") or ""


def _tracing_setup() -> Any:
    global _tracing
    with _tracing_lock:
        state = _tracing
        if state is not None and state.pid == os.getpid():
            return state.tracer
        # A forked child does not use its parent's provider: the SDK restarts the batch
        # processor's thread in the child, but we build our own anyway, once per process.
        endpoint = _otlp_endpoint()
        if not endpoint and not _host_provider_set():
            _tracing = _TracingState(os.getpid(), None, None, owned=False)
            return None
        try:
            tracer, provider, owned = _tracer_build(endpoint)
        except Exception:
            logger.exception("tracing disabled: OpenTelemetry could not be set up")
            tracer, provider, owned = None, None, False
        _tracing = _TracingState(os.getpid(), tracer, provider, owned)
        return tracer


def _host_provider_set() -> bool:
    """Whether the host application installed a global TracerProvider (it must have
    imported OpenTelemetry to do so: nothing is imported to find out)."""
    api = sys.modules.get("opentelemetry.trace")
    return api is not None and not isinstance(
        api.get_tracer_provider(), (api.ProxyTracerProvider, api.NoOpTracerProvider)
    )


def _tracer_build(endpoint: str) -> tuple[Any, Any, bool]:
    from opentelemetry import trace
    from opentelemetry.sdk import trace as sdk_trace

    provider = trace.get_tracer_provider()
    owned = isinstance(provider, trace.ProxyTracerProvider)
    if owned:  # the host application set none: ours, private (not made global)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        traces = getattr(settings, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "") or (
            endpoint.rstrip("/") + "/v1/traces"
        )
        resource = Resource.create(
            {"service.name": getattr(settings, "OTEL_SERVICE_NAME", "") or "polos"}
        )
        provider = sdk_trace.TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces)))
        logger.info("tracing: OTLP export to %s", traces)
    tracer = provider.get_tracer("workflows", "1")
    if isinstance(tracer, sdk_trace.Tracer):
        # This scope's tracer only (the provider keeps one per scope): derived ids.
        tracer.id_generator = _DerivedIds(tracer.id_generator)
    return tracer, provider, owned


def tracing_reset() -> None:
    """Forget this process's tracer (its spans sent first): the next span sets tracing
    up again from the settings. For tests and settings changes."""
    global _tracing
    with _tracing_lock:
        state, _tracing = _tracing, None
    if state is not None and state.owned and state.pid == os.getpid():
        state.provider.shutdown()


def tracing_flush(timeout_millis: int = 5000) -> None:
    """Send the spans waiting in this process's batch processor."""
    state = _tracing
    if state is not None and state.pid == os.getpid() and state.provider is not None:
        flush = getattr(state.provider, "force_flush", None)
        if flush is not None:
            flush(timeout_millis)


def _derived_ids_class() -> type:
    from opentelemetry.sdk.trace.id_generator import IdGenerator

    class DerivedIds(IdGenerator):
        """Hands out the ids set for the span being started in this thread (by
        `_emit`), else the wrapped generator's."""

        def __init__(self, fallback: IdGenerator) -> None:
            self.fallback = fallback

        def generate_trace_id(self) -> int:
            pending = getattr(_next_ids, "trace_id", None)
            return pending if pending is not None else self.fallback.generate_trace_id()

        def generate_span_id(self) -> int:
            pending = getattr(_next_ids, "span_id", None)
            return pending if pending is not None else self.fallback.generate_span_id()

    return DerivedIds


def _DerivedIds(fallback: Any) -> Any:  # a class, built on first use (no import before)
    return _derived_ids_class()(fallback)


_next_ids = threading.local()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ns(moment: datetime | int) -> int:
    if isinstance(moment, int):
        return moment
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _emit(
    tracer: Any,
    *,
    name: str,
    trace_id: int,
    span_id: int,
    parent_id: int | None,
    start: datetime | int,
    end: datetime | int,
    attributes: dict[str, Any],
    error: str | None = None,
    kind: str = "internal",
) -> None:
    from opentelemetry import trace

    context = None
    if parent_id is not None:
        parent = trace.SpanContext(
            trace_id, parent_id, is_remote=False, trace_flags=trace.TraceFlags(1)
        )
        context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
    _next_ids.trace_id, _next_ids.span_id = trace_id, span_id
    try:
        span = tracer.start_span(
            name,
            context=context,
            kind=trace.SpanKind.CONSUMER if kind == "consumer" else trace.SpanKind.INTERNAL,
            attributes={k: v for k, v in attributes.items() if v is not None},
            start_time=_ns(start),
        )
    finally:
        _next_ids.trace_id = _next_ids.span_id = None
    if error is not None:
        span.set_status(trace.Status(trace.StatusCode.ERROR, error[:1000]))
    span.end(end_time=_ns(end))


# --- spans of steps -----------------------------------------------------------------------


def _step_attributes(
    ctx: "WorkflowContext", key: str, kind: str, status: str, *, position: int, attempt: int
) -> dict[str, Any]:
    return {
        "workflow.id": ctx.workflow_id,
        "workflow.run_id": str(ctx.run_id),
        "workflow.step.key": key,
        "workflow.step.kind": kind,
        "workflow.step.status": status,
        "workflow.step.position": position,
        "workflow.step.attempt": attempt,
    }


def _span_of_step(tracer: Any, ctx: "WorkflowContext", record: "StepRecord") -> None:
    key, kind = record.key, str(record.kind)
    segment: _Segment | None = ctx.observed_segment
    attributes = _step_attributes(
        ctx, key, kind, str(record.status), position=record.position, attempt=record.attempt
    )
    error = record.error or None
    name = f"step {key}"
    meta = record.meta or {}
    data = record.input if isinstance(record.input, dict) else {}
    start = record.started_at
    agent = agent_key_of(key, kind)
    parent = span_id(ctx.run_id, agent) if agent else (segment.span_id if segment else None)
    if agent and segment is not None:
        segment.agent_starts.setdefault(agent, start)
    if error:
        attributes["error.type"] = error.split(":", 1)[0]
    if kind == "llm":
        usage = meta.get("usage") or {}
        model = meta.get("model") or data.get("model")
        name = f"chat {data.get('model') or model}"
        attributes.update(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": meta.get("provider"),
                "gen_ai.system": meta.get("provider"),
                "gen_ai.request.model": data.get("model"),
                "gen_ai.response.model": meta.get("model"),
                "gen_ai.agent.id": data.get("agent_id"),
                "gen_ai.usage.input_tokens": usage.get("prompt_tokens"),
                "gen_ai.usage.output_tokens": usage.get("completion_tokens"),
                "gen_ai.response.finish_reasons": (
                    [meta["finish_reason"]] if meta.get("finish_reason") else None
                ),
                "workflow.llm.rate_limited": meta.get("rate_limited"),
                "workflow.llm.latency_ms": meta.get("latency_ms"),
            }
        )
    elif kind == "tool":
        tool_name = data.get("tool") or key.rsplit("/", 1)[-1]
        name = f"execute_tool {tool_name}"
        attributes.update(
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": tool_name,
                "gen_ai.tool.type": "function",
                "gen_ai.tool.call.id": data.get("call_id"),
            }
        )
        output = record.output if isinstance(record.output, dict) else {}
        if not error and output.get("error"):  # the tool answered the model an error
            error = str(output["error"])
            attributes["error.type"] = "tool_error"
    elif kind == "agent":
        agent_id = meta.get("agent") or data.get("agent")
        name = f"invoke_agent {agent_id or key}"
        usage = meta.get("total_usage") or {}
        attributes.update(
            {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.id": agent_id,
                "gen_ai.agent.name": agent_id,
                "gen_ai.usage.input_tokens": usage.get("prompt_tokens"),
                "gen_ai.usage.output_tokens": usage.get("completion_tokens"),
            }
        )
        if segment is not None:
            first = segment.agent_starts.pop(key, None)
            if first is not None and first < start:
                start = first
    _emit(
        tracer,
        name=name,
        trace_id=trace_id(ctx.run_id),
        span_id=span_id(ctx.run_id, key),
        parent_id=parent,
        start=start,
        end=record.finished_at or start,
        attributes=attributes,
        error=error,
    )


# --- GET /metrics -----------------------------------------------------------------------


class WorkflowsCollector:
    """The engine's database-backed metrics, read at scrape time (one query each)."""

    def collect(self) -> Iterator[Metric]:
        from django.db.models import Count

        from .models import RunStatus, WorkflowRun
        from .queue import queue_depth
        from .registry import workflows_all

        runs = GaugeMetricFamily(
            "workflows_runs",
            "Runs by workflow and status (database).",
            labels=["workflow", "status"],
        )
        counts = {(d.id, s.value): 0 for d in workflows_all() for s in RunStatus}
        rows = (
            WorkflowRun.objects.order_by()
            .values_list("workflow_id", "status")
            .annotate(n=Count("pk"))
        )
        for workflow_id, status, n in rows:
            counts[(workflow_id, status)] = n
        for (workflow_id, status), n in sorted(counts.items()):
            runs.add_metric([workflow_id, status], n)
        yield runs
        yield GaugeMetricFamily(
            "workflows_queue_depth",
            "Tasks waiting in the queue for a worker (the broker's count).",
            value=queue_depth(),
        )
        yield from self._dependencies()

    def _dependencies(self) -> Iterator[Metric]:
        from .models import Circuit, CircuitState
        from .selectors import runs_waiting_by_dependency

        states = GaugeMetricFamily(
            "workflows_circuit_state",
            "Each dependency's circuit: 1 for its state, 0 for the others (database).",
            labels=["dependency", "state"],
        )
        failures = GaugeMetricFamily(
            "workflows_circuit_consecutive_failures",
            "Transient failures in a row of each dependency, across runs (database).",
            labels=["dependency"],
        )
        for circuit in Circuit.objects.order_by("dependency"):
            for state in CircuitState:
                states.add_metric([circuit.dependency, state.value], circuit.state == state)
            failures.add_metric([circuit.dependency], circuit.consecutive_failures)
        waiting = GaugeMetricFamily(
            "workflows_runs_waiting_for_dependency",
            "Runs parked until their step's next attempt at a dependency (database).",
            labels=["dependency"],
        )
        for dependency, count in sorted(runs_waiting_by_dependency().items()):
            waiting.add_metric([dependency], count)
        yield states
        yield failures
        yield waiting


class _Guarded:
    """Runs a database collector; a failure is logged and reported as
    `workflows_metrics_collector_up{collector}=0`, and the scrape still answers."""

    def __init__(self, collectors: Iterable[Any]) -> None:
        self.collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "workflows_metrics_collector_up",
            "Whether a database-backed collector answered this scrape.",
            labels=["collector"],
        )
        for collector in self.collectors:
            name = type(collector).__name__
            try:
                metrics = list(collector.collect())
            except Exception:
                logger.exception("metrics collector %s failed", name)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from metrics
        yield up


class _ProcessRegistry:
    """Outside multiprocess mode: this process's own metrics."""

    def collect(self) -> Iterator[Metric]:
        from prometheus_client import REGISTRY

        yield from REGISTRY.collect()


def _sweep_dead_processes(path: str) -> None:
    """Drop the live gauges of worker processes that died without being marked dead
    (killed with SIGKILL). The directory is this host's: pids are this host's."""
    for name in os.listdir(path):
        if not name.startswith("gauge_live") or not name.endswith(".db"):
            continue
        try:
            pid = int(name[:-3].rsplit("_", 1)[1])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            prometheus_multiprocess.mark_process_dead(pid, path)
        except PermissionError:
            pass


def metrics_registry() -> CollectorRegistry:
    """Every process's metrics of this host, and the database-backed ones."""
    registry = CollectorRegistry()
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and os.path.isdir(path):
        _sweep_dead_processes(path)
        prometheus_multiprocess.MultiProcessCollector(registry, path=path)
    else:
        registry.register(_ProcessRegistry())
    registry.register(_Guarded([WorkflowsCollector(), *hooks.registry.metrics_collectors]))
    return registry


def _authorized(request: HttpRequest, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def metrics_view(request: HttpRequest) -> HttpResponse:
    """`GET /metrics`: 404 when METRICS_TOKEN is unset, 401 without it as a bearer token."""
    token = getattr(settings, "METRICS_TOKEN", "")
    if not token:
        raise Http404("metrics are off: METRICS_TOKEN is not set")
    if not _authorized(request, token):
        response = HttpResponse(
            "A bearer token is required.\n", status=401, content_type="text/plain"
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    from prometheus_client import CONTENT_TYPE_LATEST

    response = HttpResponse(generate_latest(metrics_registry()), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
