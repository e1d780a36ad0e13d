"""The agent loop through the real `openai` SDK against a scripted local server."""

import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from tests.support.openai_server import reply_error, reply_text, reply_tool_calls, tool_call
from tests.workflows.sample_workflows import journal_lines
from workflows import workflow_start
from workflows.agents.contexts import records_expanded
from workflows.engine.context import StepContext
from workflows.engine.executor import run_execute
from workflows.engine.services import runs_reap
from workflows.models import RunStatus, StepRecord, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)

ANSWER = json.dumps({"total": 5, "note": "added"})


def run_agent(queue_capture, **payload) -> WorkflowRun:
    run = workflow_start("test.agent", {"question": "What is 2 + 3?", **payload})
    queue_capture.drain()
    run.refresh_from_db()
    return run


def step_keys(run: WorkflowRun) -> list[str]:
    return list(StepRecord.objects.filter(run=run).values_list("key", flat=True))


def tool_messages(request) -> list[dict]:
    return [m for m in request.json["messages"] if m["role"] == "tool"]


def test_tool_calling_conversation_end_to_end(queue_capture, openai_server):
    openai_server.script([reply_tool_calls([("add", {"a": 2, "b": 3})]), reply_text(ANSWER)])
    run = run_agent(queue_capture)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"total": 5, "note": "added"}
    assert step_keys(run) == ["ask/llm/1", "ask/tool/1/add", "ask/llm/2", "ask"]
    # gpt-4o-mini, each call: 10 in at $0.15/M + 5 out at $0.60/M = 4.5, so 5 micro-dollars
    assert run.usage == {"prompt_tokens": 20, "completion_tokens": 10, "cost_microusd": 10}

    first, second = openai_server.chat_requests
    add_schema = next(t for t in first.json["tools"] if t["function"]["name"] == "add")
    assert add_schema["function"]["description"] == "Add two integers"
    assert add_schema["function"]["strict"] is True
    assert add_schema["function"]["parameters"]["properties"] == {
        "a": {"title": "A", "type": "integer"},
        "b": {"title": "B", "type": "integer"},
    }
    assert first.json["response_format"]["type"] == "json_schema"
    assert first.json["response_format"]["json_schema"]["name"] == "Answer"
    assert first.json["response_format"]["json_schema"]["strict"] is True
    [result] = tool_messages(second)
    assert json.loads(result["content"]) == {"sum": 5}
    assert result["tool_call_id"] == second.json["messages"][2]["tool_calls"][0]["id"]

    llm = StepRecord.objects.get(run=run, key="ask/llm/1")
    assert llm.kind == "llm" and llm.meta["model"] == "gpt-4o-mini"
    assert llm.meta["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "cost_microusd": 5}
    # Lean: the step keeps the user's turn and names the context; the system prompt and
    # tools are stored once, and the trace's readers get back exactly what was sent.
    assert llm.input["added"] == [{"role": "user", "content": "What is 2 + 3?"}]
    assert "messages" not in llm.input and "tools" not in llm.input
    shown = {r.key: r for r in records_expanded(run.steps.order_by("position"))}
    for number, request in enumerate(openai_server.chat_requests, start=1):
        sent = shown[f"ask/llm/{number}"].input
        assert sent["messages"] == request.json["messages"]
        assert sent["tools"] == request.json["tools"]
        assert sent["response_format"] == request.json["response_format"]
    agent = shown["ask"]
    assert agent.input == {"agent": "test.calculator", "input": "What is 2 + 3?"}
    assert agent.output["messages"][-1]["role"] == "assistant"
    assert agent.output["tool_calls"][0]["name"] == "add"
    assert "sk-test" not in json.dumps(list(StepRecord.objects.values("input", "output")))


def test_two_tool_calls_in_one_turn(queue_capture, openai_server):
    openai_server.script(
        [
            reply_tool_calls([("add", {"a": 1, "b": 1}), ("add", {"a": 2, "b": 2})]),
            reply_text(ANSWER),
        ]
    )
    run = run_agent(queue_capture)
    assert run.status == RunStatus.COMPLETED
    assert step_keys(run) == ["ask/llm/1", "ask/tool/1/add", "ask/tool/2/add", "ask/llm/2", "ask"]
    contents = [json.loads(m["content"]) for m in tool_messages(openai_server.chat_requests[1])]
    assert contents == [{"sum": 2}, {"sum": 4}]


def test_invalid_json_arguments_go_back_to_the_model(queue_capture, openai_server):
    openai_server.script(
        [reply_tool_calls([tool_call("add", raw_arguments="{not json")]), reply_text(ANSWER)]
    )
    run = run_agent(queue_capture)
    assert run.status == RunStatus.COMPLETED
    [message] = tool_messages(openai_server.chat_requests[1])
    assert json.loads(message["content"])["error"].startswith("Invalid arguments for add:")
    assert StepRecord.objects.get(run=run, key="ask/tool/1/add").meta == {"error": True}


def test_unknown_tool_goes_back_to_the_model(queue_capture, openai_server):
    openai_server.script([reply_tool_calls([("launch_rockets", {})]), reply_text(ANSWER)])
    run = run_agent(queue_capture)
    assert run.status == RunStatus.COMPLETED
    [message] = tool_messages(openai_server.chat_requests[1])
    assert json.loads(message["content"]) == {
        "error": "Unknown tool 'launch_rockets'. Available tools: add, charge."
    }


def test_answer_failing_the_schema_gets_one_corrective_turn(queue_capture, openai_server):
    openai_server.script([reply_text('{"total": "five"}'), reply_text(ANSWER)])
    run = run_agent(queue_capture)
    assert run.status == RunStatus.COMPLETED and run.output["total"] == 5
    correction = openai_server.chat_requests[1].json["messages"][-1]
    assert correction["role"] == "user"
    assert "does not match the required JSON schema Answer" in correction["content"]
    assert "total" in correction["content"]


def test_answer_failing_the_schema_twice_fails_clearly(queue_capture, openai_server):
    openai_server.script([reply_text("five"), reply_text('{"total": 5}')])
    run = run_agent(queue_capture)
    assert run.status == RunStatus.FAILED
    assert "Step 'ask' failed" in run.error
    assert "did not match Answer after a corrective turn" in run.error
    assert "note: Field required" in run.error


def test_max_steps_exceeded_fails_the_agent_step(queue_capture, openai_server):
    openai_server.script([reply_tool_calls([("add", {"a": 1, "b": 1})])] * 2)
    run = run_agent(queue_capture, agent="test.hasty")
    assert run.status == RunStatus.FAILED
    assert "reached max_steps=2 model calls without a final answer" in run.error
    assert len(openai_server.chat_requests) == 2


def test_rate_limit_then_success(queue_capture, openai_server, settings):
    settings.OPENAI_MAX_RETRIES = 1
    openai_server.script(
        [reply_error(429, "Rate limit reached", retry_after_ms=10), reply_text(ANSWER)]
    )
    run = run_agent(queue_capture)
    assert run.status == RunStatus.COMPLETED
    assert len(openai_server.chat_requests) == 2


def test_authentication_error_fails_at_once_naming_the_variable(queue_capture, openai_server):
    openai_server.script([reply_error(401, "Incorrect API key provided: sk-test-not-a-real-key")])
    run = run_agent(queue_capture)
    assert run.status == RunStatus.FAILED
    assert "set OPENAI_API_KEY" in run.error
    assert "sk-test-not-a-real-key" not in run.error + run.error_traceback
    assert len(openai_server.chat_requests) == 1  # no retry


def test_persistent_server_error_fails_within_the_step_limits(queue_capture, openai_server):
    openai_server.script([reply_error(500, "boom")] * 2)
    run = run_agent(queue_capture)
    assert run.status == RunStatus.FAILED
    assert "Step 'ask/llm/1' failed after 2 attempt(s)" in run.error
    assert "InternalServerError" in run.error
    assert len(openai_server.chat_requests) == 2  # the step's policy: 2 attempts, SDK: 0


class WorkerCrash(BaseException):
    """Stands in for SIGKILL: nothing after it runs, nothing is cleaned up."""


def test_crash_after_charge_committed_repeats_no_call(
    queue_capture, openai_server, monkeypatch, tmp_path: Path
):
    journal = tmp_path / "charges.txt"
    openai_server.script(
        [
            reply_tool_calls([("charge", {"amount_cents": 2500, "journal": str(journal)})]),
            reply_text(ANSWER),
        ]
    )
    original_call = StepContext.execute_step
    crashed = []

    async def crash_before_second_model_call(self, key, *args, **kwargs):
        if key == "ask/llm/2" and not crashed:
            crashed.append(key)
            raise WorkerCrash
        return await original_call(self, key, *args, **kwargs)

    monkeypatch.setattr(StepContext, "execute_step", crash_before_second_model_call)
    run = workflow_start("test.agent", {"question": "Charge 25.00"})
    with pytest.raises(WorkerCrash):
        queue_capture.drain()
    assert step_keys(run) == ["ask/llm/1", "ask/tool/1/charge"]

    WorkflowRun.objects.filter(pk=run.id).update(lease_expires_at=timezone.now() - timedelta(1))
    assert runs_reap() == [run.id]
    assert queue_capture.drain() == ["completed"]

    assert journal_lines(journal) == ["charge 2500"]
    assert len(openai_server.chat_requests) == 2  # llm/1 once, llm/2 once
    receipt = json.loads(tool_messages(openai_server.chat_requests[1])[0]["content"])
    assert receipt["idempotency_key"] == f"{run.id}:ask/tool/1/charge"


def test_simulated_provider_records_the_same_steps_as_a_real_server(
    queue_capture, openai_server, settings
):
    openai_server.script([reply_tool_calls([("add", {"a": 2, "b": 3})]), reply_text(ANSWER)])
    over_http = run_agent(queue_capture)
    settings.LLM_PROVIDER = "simulated"
    simulated = run_agent(queue_capture)

    def shape(run: WorkflowRun) -> list[tuple]:
        return [
            (s.key, s.kind, s.status, s.output if s.kind == "tool" else None)
            for s in StepRecord.objects.filter(run=run)
        ]

    assert shape(simulated) == shape(over_http)
    assert simulated.output == over_http.output == {"total": 5, "note": "added"}
    assert StepRecord.objects.get(run=simulated, key="ask/llm/1").meta["provider"] == "simulated"
    assert simulated.usage["prompt_tokens"] > 0


def test_replay_after_suspend_style_reexecution_runs_nothing(queue_capture, openai_server):
    openai_server.script([reply_tool_calls([("add", {"a": 2, "b": 3})]), reply_text(ANSWER)])
    run = run_agent(queue_capture)
    WorkflowRun.objects.filter(pk=run.id).update(status=RunStatus.PENDING)
    assert run_execute(run.id) == "completed"
    assert len(openai_server.chat_requests) == 2
