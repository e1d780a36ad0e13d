"""The order agent's part of a run's trace, as the fraud review's page shows it
(`fraud_reviews.FraudReviewAdmin.change_view`): its model messages and tool calls, in
order, compacted for a reviewer to read."""

import json
from typing import Any

from django.utils.text import Truncator

from workflows.agents.contexts import records_expanded
from workflows.agents.transcript import agent_calls_prefix, llm_reply, tool_call_recorded
from workflows.console.step_tree import StepNode, step_find, step_tree
from workflows.models import StepKind, StepRecord

from ..order_processing import START_ORDER_AGENT_KEY


def _compact(value: Any, limit: int = 1500) -> str:
    """A JSON value (or a JSON text) on as few lines as it takes, truncated."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return Truncator(value).chars(limit)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return Truncator(text).chars(limit)


def agent_trace(run_id: Any) -> list[dict[str, Any]]:
    """The order agent's model messages and tool calls, in order, for the review page."""
    records = records_expanded(
        StepRecord.objects.filter(
            run_id=run_id, key__startswith=agent_calls_prefix(START_ORDER_AGENT_KEY)
        ).order_by("position")
    )
    agent = step_find(step_tree([StepNode.of_record(r) for r in records]), START_ORDER_AGENT_KEY)
    entries: list[dict[str, Any]] = []
    for step in (node.record for node in (agent.descendants() if agent else [])):
        if step is None:
            continue
        if step.kind == StepKind.LLM:
            reply = llm_reply(step.output)
            entries.append(
                {
                    "key": step.key,
                    "kind": "llm",
                    "content": _compact(reply.content if reply else None),
                    "tool_calls": [
                        {"name": call.name, "arguments": _compact(call.arguments)}
                        for call in (reply.tool_calls if reply else ())
                    ],
                    "error": step.error,
                }
            )
        elif step.kind == StepKind.TOOL:
            call = tool_call_recorded(step.key, step.input, step.output)
            entries.append(
                {
                    "key": step.key,
                    "kind": "tool",
                    "tool": call.tool_name,
                    "arguments": _compact(call.arguments),
                    "output": _compact(call.output),
                    "error": call.error or step.error,
                }
            )
    return entries
