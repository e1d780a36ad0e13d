import json
import uuid
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Model
from django.utils import timezone

from workflows.agents.contexts import records_expanded
from workflows.agents.transcript import (
    agent_step_recorded,
    llm_messages_sent,
    llm_reply,
    tool_call_recorded,
)
from workflows.console.step_tree import StepNode, step_tree
from workflows.engine.errors import RunNotFoundError
from workflows.engine.selectors import run_get_with_steps, usage_total
from workflows.management.tables import table_write
from workflows.models import StepKind, StepRecord, StepStatus, Wait, WorkflowRun

ABRIDGE = 60


def run_id_parse(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a run id (a UUID)") from None


def run_with_history(value: str) -> WorkflowRun:
    """The run with its steps and waits in position order, or a one-line CommandError."""
    try:
        return run_get_with_steps(run_id=run_id_parse(value))
    except RunNotFoundError as exc:
        raise CommandError(str(exc)) from None


def when(moment: datetime | None) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S %Z") if moment else "—"


def abridge(text: str, limit: int = ABRIDGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compact(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, cls=DjangoJSONEncoder)


def arguments_text(value: Any) -> str:
    """A plain step's input, `{"args": [...], "kwargs": {...}}`, as `a, b, k=v`."""
    if not (isinstance(value, dict) and set(value) <= {"args", "kwargs"}):
        return compact(value)
    args = value.get("args")
    parts = [compact(a) for a in args] if isinstance(args, list) else [compact(args)]
    kwargs = value.get("kwargs") or {}
    if isinstance(kwargs, dict):
        parts += [f"{k}={compact(v)}" for k, v in kwargs.items()]
    else:
        parts.append(compact(kwargs))
    return ", ".join(p for p in parts if p)


def llm_texts(step: StepRecord) -> tuple[str, str]:
    """The last message the model was sent → its answer (text or tool calls)."""
    sent_messages = llm_messages_sent(step.input)
    last = sent_messages[-1] if sent_messages else None
    sent = f"{last.role}: {last.content}" if last else ""
    reply = llm_reply(step.output)
    if reply is None:
        return sent, ""
    calls = [f"{call.name}({call.arguments})" for call in reply.tool_calls]
    return sent, ", ".join(calls) or reply.content


def step_texts(step: StepRecord) -> tuple[str, str]:
    data_in, data_out = step.input, step.output
    if step.kind == StepKind.LLM:
        sent, answer = llm_texts(step)
    elif step.kind == StepKind.TOOL and isinstance(data_in, dict):
        call = tool_call_recorded(step.key, data_in, data_out)
        sent = compact(call.arguments)
        answer = f"error: {call.error}" if call.error else compact(call.output)
    elif step.kind == StepKind.AGENT and isinstance(data_in, dict):
        agent = agent_step_recorded(data_in, data_out, step.meta)
        sent, answer = compact(agent.input), compact(agent.result)
    elif step.kind in (StepKind.SUSPEND, StepKind.SLEEP):
        sent = compact(data_in)
        answer = compact(data_out.get("data") if isinstance(data_out, dict) else data_out)
    else:
        sent, answer = arguments_text(data_in), compact(data_out)
    if step.status == StepStatus.FAILED:
        answer = f"✗ {step.error}"
    elif not answer:
        answer = "—"
    return abridge(sent), abridge(answer)


def fields(obj: Model, skip: set[str]) -> dict[str, Any]:
    return {
        f.name: getattr(obj, f.attname) for f in obj._meta.concrete_fields if f.name not in skip
    }


def record_json(run: WorkflowRun) -> dict[str, Any]:
    """The run (all but its lease owner) with its full steps and waits."""
    return {
        **fields(run, {"lease_owner"}),
        "steps": [fields(s, {"run"}) for s in run.steps.all()],
        "waits": [
            {
                **fields(w, {"run", "resumed_by"}),
                "resumed_by": w.resumed_by.get_username() if w.resumed_by else None,
            }
            for w in run.waits.all()
        ],
    }


class Command(BaseCommand):
    help = (
        "Show a run's trace: its header (workflow, status, times, error), its steps as a "
        "tree (agent model and tool calls under their agent) with duration, tokens and "
        "abridged input → output, and its waits. --json prints the whole record."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run_id", help="The run's id (a UUID).")
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print the run with its full steps and waits as JSON.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        run = run_with_history(options["run_id"])
        if options["json"]:
            self.stdout.write(json.dumps(record_json(run), cls=DjangoJSONEncoder, indent=2))
            return
        self.stdout.write("\n".join(self.header(run)))
        nodes = [StepNode.of_record(step) for step in records_expanded(run.steps.all())]
        self.stdout.write("")
        if nodes:
            self.stdout.write("\n".join(self.steps_table(step_tree(nodes))))
        elif run.pruned_at is not None:
            self.stdout.write(f"History pruned at {run.pruned_at:%Y-%m-%d %H:%M:%S} UTC.")
        else:
            self.stdout.write("No steps recorded yet.")
        waits = list(run.waits.all())
        if waits:
            self.stdout.write("")
            self.waits_table(waits)

    def header(self, run: WorkflowRun) -> list[str]:
        tokens = usage_total(run.usage)
        if run.started_at and run.finished_at:
            took = f"  ({(run.finished_at - run.started_at).total_seconds():.2f} s)"
        else:
            took = ""
        lines = [
            f"run       {run.id}",
            f"workflow  {run.workflow_id}",
            f"status    {run.status}",
            f"created   {when(run.created_at)}",
            f"started   {when(run.started_at)}",
            f"finished  {when(run.finished_at)}{took}",
            f"attempts  {run.attempts}    tokens {tokens}",
        ]
        if run.error:
            lines.append(f"error     {run.error}")
        return lines

    def steps_table(self, roots: list[StepNode]) -> list[str]:
        rows: list[tuple[str, ...]] = []

        def visit(node: StepNode, depth: int) -> None:
            step = node.record
            key = "  " * depth + node.key
            tokens = node.tokens_so_far()
            tokens_text = "" if tokens is None else str(tokens)
            if step is None:
                rows.append((key, "agent", "unfinished", "", tokens_text, "", ""))
            else:
                ms = (step.finished_at - node.started_at).total_seconds() * 1000
                sent, answer = step_texts(step)
                rows.append((key, step.kind, step.status, f"{ms:.1f}", tokens_text, sent, answer))
            for child in node.children:
                visit(child, depth + 1)

        for root in roots:
            visit(root, 0)
        head = ("step", "kind", "status", "ms", "tokens")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        right = {3, 4}

        def cells(values: tuple[str, ...]) -> str:
            return "  ".join(
                v.rjust(w) if i in right else v.ljust(w)
                for i, (v, w) in enumerate(zip(values, widths, strict=True))
            )

        lines = [cells(head) + "  input → output", cells(tuple("-" * w for w in widths))]
        for row in rows:
            io = f"{row[5]} → {row[6]}" if row[5] or row[6] else ""
            lines.append(f"{cells(row[:5])}  {io}".rstrip())
        return lines

    def waits_table(self, waits: list[Wait]) -> None:
        rows = [
            [
                w.key,
                w.kind,
                w.status,
                when(w.deadline),
                w.resumed_by.get_username() if w.resumed_by else "—",
                when(w.resumed_at),
            ]
            for w in waits
        ]
        headers = ["wait", "kind", "status", "deadline", "decided by", "at"]
        table_write(self.stdout, headers, rows)
