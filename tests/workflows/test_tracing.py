"""OpenTelemetry spans of runs, received by a fake OTLP/HTTP collector (a local HTTP
server decoding `ExportTraceServiceRequest` protobufs), with ids derived from the run
and the step, and no span sent twice when a run is replayed."""

import gzip
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.support.servers import BackgroundHTTPServer, QuietHandler
from workflows import observability, run_resume, workflow_start
from workflows.models import StepRecord, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)


def _value(any_value: Any) -> Any:
    which = any_value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, which) if which else None


class _CollectorHandler(QuietHandler):
    def do_POST(self) -> None:
        body = self.read_body()
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.owner.receive(self.path, ExportTraceServiceRequest.FromString(body))
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


class FakeCollector(BackgroundHTTPServer):
    """An OTLP/HTTP endpoint: POST /v1/traces with a protobuf body."""

    handler_class = _CollectorHandler
    thread_name = "fake-otlp-collector"

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[dict[str, Any]] = []
        self.paths: list[str] = []

    def receive(self, path: str, request: ExportTraceServiceRequest) -> None:
        self.paths.append(path)
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        {
                            "name": span.name,
                            "trace_id": int.from_bytes(span.trace_id, "big"),
                            "span_id": int.from_bytes(span.span_id, "big"),
                            "parent_id": int.from_bytes(span.parent_span_id, "big") or None,
                            "kind": span.kind,
                            "start": span.start_time_unix_nano,
                            "end": span.end_time_unix_nano,
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                            "status": span.status.code,
                            "message": span.status.message,
                            "scope": scope_spans.scope.name,
                            "service": resource.get("service.name"),
                        }
                    )

    def by_name(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["name"] == name]

    def by_key(self, key: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["attributes"].get("workflow.step.key") == key]


@pytest.fixture
def collector():
    with FakeCollector() as fake:
        yield fake


@pytest.fixture
def tracing(settings, collector):
    """Export to the fake collector; `flush()` sends what is batched."""
    settings.OTEL_EXPORTER_OTLP_ENDPOINT = collector.base_url
    settings.OTEL_SERVICE_NAME = "polos-test"
    observability.tracing_reset()
    yield observability.tracing_flush
    observability.tracing_reset()


@pytest.fixture(autouse=True)
def tracing_off_afterwards():
    yield
    observability.tracing_reset()


def nanoseconds(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def ids(run: WorkflowRun, key: str) -> int:
    return observability.span_id(run.id, key)


def test_suspended_then_resumed_run_sends_each_span_once(tracing, collector, queue_capture):
    run = workflow_start("test.approval", {})
    assert queue_capture.drain() == ["suspended"]
    tracing()
    first_segment = list(collector.spans)
    assert collector.paths and set(collector.paths) == {"/v1/traces"}
    assert {s["name"] for s in first_segment} == {
        "workflow test.approval",
        "step prepare",
        "suspend approval",
    }

    run_resume(run.id, "approval", {"approved": True})
    assert queue_capture.drain() == ["completed"]
    tracing()

    spans = collector.spans
    # Every span once, all in the run's trace, whose id is the run id.
    assert max(Counter(s["span_id"] for s in spans).values()) == 1
    assert {s["trace_id"] for s in spans} == {run.id.int}
    assert {s["service"] for s in spans} == {"polos-test"}
    # Two segments: root spans, numbered, with their outcome.
    segments = sorted(collector.by_name("workflow test.approval"), key=lambda s: s["start"])
    assert [s["span_id"] for s in segments] == [ids(run, "segment/1"), ids(run, "segment/2")]
    assert [s["parent_id"] for s in segments] == [None, None]
    assert [s["attributes"]["workflow.segment.outcome"] for s in segments] == [
        "suspended",
        "completed",
    ]
    assert [s["attributes"]["workflow.segment"] for s in segments] == [1, 2]
    assert {s["kind"] for s in segments} == {Span.SPAN_KIND_CONSUMER}
    # `prepare` ran in segment 1 and was replayed in segment 2: one span, segment 1's.
    [prepare] = collector.by_key("prepare")
    assert prepare["span_id"] == ids(run, "prepare")
    assert prepare["parent_id"] == ids(run, "segment/1")
    assert prepare["attributes"] == {
        "workflow.id": "test.approval",
        "workflow.run_id": str(run.id),
        "workflow.step.key": "prepare",
        "workflow.step.kind": "step",
        "workflow.step.status": "completed",
        "workflow.step.position": 0,
        "workflow.step.attempt": 1,
    }
    record = StepRecord.objects.get(run=run, key="prepare")
    assert prepare["start"] == nanoseconds(record.started_at)
    assert prepare["end"] == nanoseconds(record.finished_at)
    [suspend] = collector.by_key("approval")
    assert suspend["attributes"]["workflow.step.status"] == "waiting"
    assert suspend["parent_id"] == ids(run, "segment/1")
    [after] = collector.by_key("after")
    assert after["parent_id"] == ids(run, "segment/2")
    assert len(spans) == 5


def test_agent_model_and_tool_calls_are_spans_under_the_agent(
    tracing, collector, queue_capture, settings
):
    settings.LLM_PROVIDER = "simulated"
    run = workflow_start("test.agent", {"question": "What is 2 + 3?"})
    assert queue_capture.drain() == ["completed"]
    tracing()

    agent_id = ids(run, "ask")
    [agent] = collector.by_key("ask")
    assert agent["name"] == "invoke_agent test.calculator"
    assert agent["span_id"] == agent_id and agent["parent_id"] == ids(run, "segment/1")
    assert agent["attributes"]["gen_ai.operation.name"] == "invoke_agent"
    assert agent["attributes"]["workflow.step.kind"] == "agent"

    llm_calls = sorted(collector.by_name("chat gpt-4o-mini"), key=lambda s: s["start"])
    assert [s["attributes"]["workflow.step.key"] for s in llm_calls] == ["ask/llm/1", "ask/llm/2"]
    for span in llm_calls:
        key = span["attributes"]["workflow.step.key"]
        meta = StepRecord.objects.get(run=run, key=key).meta
        assert span["span_id"] == ids(run, key) and span["parent_id"] == agent_id
        attributes = span["attributes"]
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == "simulated"
        assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
        assert attributes["gen_ai.response.model"] == meta["model"]
        assert attributes["gen_ai.usage.input_tokens"] == meta["usage"]["prompt_tokens"] > 0
        assert attributes["gen_ai.usage.output_tokens"] == meta["usage"]["completion_tokens"]
        assert attributes["gen_ai.response.finish_reasons"] == [meta["finish_reason"]]
        assert attributes["workflow.step.kind"] == "llm"
    # The agent's span covers its calls, though it is committed after them.
    assert agent["start"] <= llm_calls[0]["start"] and agent["end"] >= llm_calls[-1]["end"]

    [tool] = collector.by_name("execute_tool add")
    assert tool["span_id"] == ids(run, "ask/tool/1/add") and tool["parent_id"] == agent_id
    assert tool["attributes"]["gen_ai.tool.name"] == "add"
    assert tool["attributes"]["gen_ai.operation.name"] == "execute_tool"
    assert tool["attributes"]["workflow.step.kind"] == "tool"
    assert tool["status"] == Status.STATUS_CODE_UNSET


def test_a_failed_step_and_its_segment_carry_the_error(tracing, collector, queue_capture, tmp_path):
    run = workflow_start("test.flaky", {"journal": str(tmp_path / "j"), "permanent": True})
    assert queue_capture.drain() == ["failed"]
    tracing()
    [provider] = collector.by_key("provider")
    assert provider["status"] == Status.STATUS_CODE_ERROR
    assert "card declined" in provider["message"]
    assert provider["attributes"]["workflow.step.status"] == "failed"
    assert provider["attributes"]["error.type"] == "NonRetryableError"
    [segment] = collector.by_name("workflow test.flaky")
    assert segment["status"] == Status.STATUS_CODE_ERROR
    assert "card declined" in segment["message"]
    assert segment["attributes"]["workflow.segment.outcome"] == "failed"
    assert segment["trace_id"] == run.id.int


def test_without_an_endpoint_nothing_is_traced(settings, collector, queue_capture):
    settings.OTEL_EXPORTER_OTLP_ENDPOINT = ""
    observability.tracing_reset()
    workflow_start("test.counting", {"steps": 2})
    assert queue_capture.drain() == ["completed"]
    assert observability._tracer() is None
    observability.tracing_flush()
    assert collector.spans == []


def test_a_tracer_provider_set_by_the_host_is_used(settings, collector, queue_capture, monkeypatch):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    host = TracerProvider()
    host.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: host)
    settings.OTEL_EXPORTER_OTLP_ENDPOINT = ""  # the host's provider alone turns tracing on
    observability.tracing_reset()

    run = workflow_start("test.counting", {"steps": 2})
    assert queue_capture.drain() == ["completed"]
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"workflow test.counting", "step step-0", "step step-1"}
    assert spans["step step-1"].context.span_id == ids(run, "step-1")
    assert spans["step step-1"].parent.span_id == ids(run, "segment/1")
    assert {s.context.trace_id for s in spans.values()} == {run.id.int}
    assert collector.spans == []
    # Only this module's tracer derives its ids: the host's others keep theirs.
    with host.get_tracer("host.code").start_as_current_span("host span") as span:
        assert span.get_span_context().trace_id != run.id.int
    assert type(host.get_tracer("host.code").id_generator).__name__ == "RandomIdGenerator"
