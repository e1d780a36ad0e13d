"""`manage.py runs`, `trace`, `cancel_run` and `retry_run`."""

import json
import os
import subprocess
import sys
import uuid
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from tests.support.cluster import ROOT
from tests.workflows.sample_workflows import BROKEN
from workflows.engine.services import workflow_start
from workflows.models import RunStatus, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)

UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(autouse=True)
def simulated(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def lines_of(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


# --- runs ------------------------------------------------------------------------------


def test_runs_lists_newest_first_with_filters(queue_capture):
    counting = workflow_start("test.counting", {"steps": 2})
    agent = workflow_start("test.agent", {"question": "2 + 3?"})
    approval = workflow_start("test.approval", {})
    assert queue_capture.drain() == ["completed", "completed", "suspended"]

    header, rule, *rows = lines_of(run("runs"))
    assert header.split() == [
        "id",
        "workflow",
        "status",
        "created",
        "duration",
        "attempts",
        "tokens",
        "cost",
    ]
    assert set(rule) == {"-", " "}
    assert [row.split()[0] for row in rows] == [str(approval.id), str(agent.id), str(counting.id)]
    # Columns are aligned: every row's status starts where the header's does.
    column = header.index("status")
    assert all(row[column:].split()[0] in RunStatus.values for row in rows)
    agent_row = rows[1].split()
    # attempts, tokens, and the cost: the simulated model is priced as gpt-4o-mini
    assert agent_row[2] == "completed" and agent_row[-3] == "1" and int(agent_row[-2]) > 0
    assert agent_row[-1].startswith("$0.0000") and agent_row[-1] != "$0.000000"

    completed = lines_of(run("runs", "--status", "completed"))[2:]
    assert {row.split()[0] for row in completed} == {str(counting.id), str(agent.id)}
    only = lines_of(run("runs", "--workflow", "test.approval"))[2:]
    assert [row.split()[:3] for row in only] == [[str(approval.id), "test.approval", "suspended"]]
    assert len(lines_of(run("runs", "--limit", "1"))) == 3
    assert run("runs", "--status", "failed").strip() == "No runs."


def test_runs_refuses_bad_filters():
    with pytest.raises(CommandError, match=r"^Unknown status 'done'; valid: pending, running, "):
        run("runs", "--status", "done")
    with pytest.raises(CommandError, match=r"^Unknown workflow 'nope'; known: .*test\.counting"):
        run("runs", "--workflow", "nope")
    with pytest.raises(CommandError, match="0 is not a positive number"):
        run("runs", "--limit", "0")


# --- trace -----------------------------------------------------------------------------


def test_trace_shows_agent_calls_under_their_agent(queue_capture):
    agent_run = workflow_start("test.agent", {"question": "What is 2 + 3?"})
    queue_capture.drain()
    output = run("trace", str(agent_run.id))
    assert f"run       {agent_run.id}" in output
    assert "workflow  test.agent" in output and "status    completed" in output
    table = output[output.index("step ") :].splitlines()
    assert "input → output" in table[0]
    keys = [line.split()[0] for line in table[2:]]
    assert keys == ["ask", "ask/llm/1", "ask/tool/1/add", "ask/llm/2"]
    ask, llm1, tool, llm2 = table[2:]
    assert ask.startswith("ask ") and llm1.startswith("  ask/llm/1")
    assert tool.startswith("  ask/tool/1/add")
    assert ask.split()[1:3] == ["agent", "completed"]
    assert llm1.split()[1:3] == ["llm", "completed"]
    # Model tokens: the agent's line is the sum of its model calls.
    tokens = [int(line.split()[4]) for line in (llm1, llm2)]
    assert int(ask.split()[4]) == sum(tokens)
    assert 'user: What is 2 + 3? → add({"a": 2, "b": 3})' in llm1
    assert '{"a": 2, "b": 3} → {"sum": 5}' in tool
    assert "tool: " in llm2 and '{"total": 5' in llm2
    assert all(len(line.split(" → ")[-1]) <= 60 for line in table[2:])


def test_trace_of_a_suspended_run_shows_its_wait(queue_capture):
    approval = workflow_start("test.approval", {})
    queue_capture.drain()
    output = run("trace", str(approval.id))
    assert "status    suspended" in output
    [prepare] = [line for line in output.splitlines() if line.startswith("prepare ")]
    assert prepare.split()[1:3] == ["step", "completed"] and prepare.endswith('→ {"value": 21}')
    wait_header, _, wait = output[output.index("wait ") :].splitlines()
    assert wait_header.split()[:4] == ["wait", "kind", "status", "deadline"]
    assert wait.split()[:3] == ["approval", "suspend", "waiting"]


def test_trace_abridges_long_inputs_to_one_line(queue_capture):
    agent_run = workflow_start("test.agent", {"question": "Add these:\n" + "2 + 3 " * 40})
    queue_capture.drain()
    [llm1] = [line for line in run("trace", str(agent_run.id)).splitlines() if "ask/llm/1" in line]
    sent = llm1.split("  ")[-1].split(" → ")[0]
    assert sent.startswith("user: Add these: 2 + 3") and sent.endswith("…") and len(sent) == 60


def test_trace_json_is_the_whole_record(queue_capture):
    approval = workflow_start("test.approval", {})
    queue_capture.drain()
    record = json.loads(run("trace", str(approval.id), "--json"))
    assert record["id"] == str(approval.id) and record["status"] == "suspended"
    assert "lease_owner" not in record and "lease_expires_at" in record
    assert record["input"] == {"journal": None, "timeout": 60.0}
    [step] = record["steps"]
    assert step["key"] == "prepare" and step["output"] == {"value": 21}
    [wait] = record["waits"]
    assert wait["key"] == "approval" and wait["data"] == {"question": "ship it?"}
    assert wait["status"] == "waiting" and wait["resumed_by"] is None


def test_trace_refuses_unknown_and_malformed_ids():
    with pytest.raises(CommandError, match=f"^No run {UNKNOWN}$"):
        run("trace", UNKNOWN)
    with pytest.raises(CommandError, match=r"^'not-a-uuid' is not a run id \(a UUID\)$"):
        run("trace", "not-a-uuid")


def test_trace_bad_id_exits_1_with_one_line():
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
        "LOG_LEVEL": "WARNING",  # the apps log their configuration at INFO on start-up
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "trace", "12345"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == "CommandError: '12345' is not a run id (a UUID)"


# --- cancel_run and retry_run ------------------------------------------------------------


def test_cancel_run_cancels_an_active_run_once(queue_capture):
    approval = workflow_start("test.approval", {})
    queue_capture.drain()
    output = run("cancel_run", str(approval.id))
    assert output.strip() == f"run {approval.id} (test.approval) is now cancelled"
    assert WorkflowRun.objects.get(pk=approval.id).status == RunStatus.CANCELLED
    with pytest.raises(CommandError, match="is cancelled; only active runs can be cancelled"):
        run("cancel_run", str(approval.id))


def test_cancel_run_refuses_unknown_runs():
    with pytest.raises(CommandError, match=f"^No run {UNKNOWN}$"):
        run("cancel_run", UNKNOWN)
    with pytest.raises(CommandError, match="is not a run id"):
        run("cancel_run", "abc")


def test_retry_run_continues_a_failed_run(queue_capture, tmp_path, monkeypatch):
    journal = tmp_path / "journal"
    journal.touch()
    monkeypatch.setitem(BROKEN, "permanent", True)
    flaky = workflow_start(
        "test.flaky", {"journal": str(journal), "permanent": True, "failures": 0}
    )
    assert queue_capture.drain() == ["failed"]
    trace = run("trace", str(flaky.id))
    assert "status    failed" in trace and "error     StepFailedError: Step 'provider'" in trace
    assert "✗ NonRetryableError: card declined" in trace

    monkeypatch.setitem(BROKEN, "permanent", False)
    output = run("retry_run", str(flaky.id))
    assert output.startswith(f"run {flaky.id} (test.flaky) is now pending")
    assert queue_capture.drain() == ["completed"]
    with pytest.raises(CommandError, match="is completed; only failed runs can be retried"):
        run("retry_run", str(flaky.id))


def test_retry_run_refuses_unknown_runs():
    with pytest.raises(CommandError, match=f"^No run {uuid.UUID(UNKNOWN)}$"):
        run("retry_run", UNKNOWN)
    with pytest.raises(CommandError, match="is not a run id"):
        run("retry_run", "")
