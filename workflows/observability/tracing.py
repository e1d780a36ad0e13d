"""Traces (OpenTelemetry): this process's tracer, span ids, and the spans of steps.

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
import logging
import os
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings

if TYPE_CHECKING:
    from workflows.engine.context import WorkflowContext
    from workflows.models import StepRecord

logger = logging.getLogger(__name__)


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
    # Here, not at the top: `workflows.agents` imports this package (its model hooks).
    from workflows.agents.transcript import agent_call_key_parse

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
    call = agent_call_key_parse(key)
    agent = call.agent_key if call is not None and call.kind == kind else None
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
