"""The order agent's part of a run's trace, as the fraud review's page shows it
(`fraud_reviews.FraudReviewAdmin.change_view`): its model messages and tool calls, in
order, each in plain words for a reviewer ("placed a hold of 2,500.00 USD, pi_...") with
the recorded JSON, compacted, behind it."""

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from django.utils.text import Truncator

from workflows.agents.contexts import records_expanded
from workflows.agents.transcript import agent_calls_prefix, llm_reply, tool_call_recorded
from workflows.console.step_tree import StepNode, step_find, step_tree
from workflows.models import StepKind, StepRecord

from ..money import amount_grouped
from ..order_processing import START_ORDER_AGENT_KEY
from ..payments import AUTHORIZED, CAPTURED

# What the agent's tools do, as a reviewer would say it before the result is known.
TOOL_INTENTS = {
    "charge_stripe": "asked to take the payment",
    "send_confirmation_email": "asked to send the confirmation",
}


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


def _loaded(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _money(data: dict[str, Any]) -> str:
    currency = str(data.get("currency") or "")
    try:
        amount = amount_grouped(Decimal(str(data.get("amount"))), currency)
    except InvalidOperation:
        amount = str(data.get("amount"))
    return f"{amount} {currency.upper()}".strip()


def tool_said(tool: str, arguments: Any, output: Any, error: str) -> str:
    """A tool call in plain words, from what it recorded."""
    arguments, output = _loaded(arguments), _loaded(output)
    args = arguments if isinstance(arguments, dict) else {}
    out = output if isinstance(output, dict) else {}
    if tool == "charge_stripe":
        if error:
            return f"could not take the payment of {_money(args)}: {error}"
        status = str(out.get("status") or "")
        verb = {AUTHORIZED: "placed a hold of", CAPTURED: "charged"}.get(
            status, f"payment {status or 'unknown'}:"
        )
        return f"{verb} {_money(out or args)}, {out.get('charge_id') or 'no charge id'}"
    if tool == "send_confirmation_email":
        if error:
            return f"could not send the confirmation to {args.get('email', '?')}: {error}"
        return f"sent the confirmation to {args.get('email', '?')}"
    return f"called {tool}" + (f": {error}" if error else "")


def reply_said(content: Any, tool_names: list[str], error: str) -> str:
    """A model reply in plain words: the tools it asked for, or what it reported."""
    if error:
        return f"the model call failed: {error}"
    if tool_names:
        return "; ".join(TOOL_INTENTS.get(name, f"asked to call {name}") for name in tool_names)
    answer = _loaded(content)
    if isinstance(answer, dict):
        said = f"reported: \u201c{answer.get('status_message') or '(no message)'}\u201d"
        if answer.get("action_requested") == "fraud_review":
            said += " and asked for a fraud review"
        return said
    return f"said: \u201c{Truncator(str(answer or '')).chars(300)}\u201d"


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
                    "said": reply_said(
                        reply.content if reply else None,
                        [call.name for call in (reply.tool_calls if reply else ())],
                        step.error or "",
                    ),
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
                    "said": tool_said(
                        call.tool_name, call.arguments, call.output, call.error or step.error or ""
                    ),
                }
            )
    return entries
