"""The idempotency key a provider receives is one formula, whether a workflow step asks
for it (`ctx.idempotency_key`) or a tool does (`ToolContext.idempotency_key`)."""

from types import SimpleNamespace
from uuid import uuid4

from workflows.agents.tools import ToolContext
from workflows.engine.context import WorkflowContext
from workflows.engine.idempotency import step_idempotency_key


def test_a_step_and_a_tool_call_get_the_same_key_for_the_same_step():
    run_id, key = uuid4(), "agent/tool/1/charge"
    tool = ToolContext(run_id=run_id, workflow_id="wf", agent_id="agent", step_key=key)
    step = WorkflowContext.idempotency_key(SimpleNamespace(run_id=run_id), key)
    assert tool.idempotency_key == step == step_idempotency_key(run_id, key) == f"{run_id}:{key}"
    assert step_idempotency_key(uuid4(), key) != step  # another run, another key
