import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Model
from django.http import Http404
from django.utils import timezone

from workflows.models import StepKind, StepRecord, StepStatus, Wait, WorkflowRun
from workflows.selectors import run_get_with_steps

ABRIDGE = 60
# An agent's model and tool calls: `<agent key>/llm/<n>`, `<agent key>/tool/<n>/<name>`.
AGENT_CHILD = re.compile(r"^(?P<agent>.+)/(?:llm/\d+|tool/\d+/[^/]+)$")


def run_id_parse(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a run id (a UUID)") from None


def run_with_history(value: str) -> WorkflowRun:
    """The run with its steps and waits in position order, or a one-line CommandError."""
    try:
        return run_get_with_steps(run_id=run_id_parse(value))
    except Http404:
        raise CommandError(f"No run {value}") from None


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
    messages = (step.input or {}).get("messages") if isinstance(step.input, dict) else None
    last = messages[-1] if messages else {}
    sent = f"{last.get('role', '?')}: {compact(last.get('content'))}" if last else ""
    message = (step.output or {}).get("message") if isinstance(step.output, dict) else None
    message = message or {}
    calls = [
        f"{(c.get('function') or {}).get('name', '?')}"
        f"({(c.get('function') or {}).get('arguments', '')})"
        for c in message.get("tool_calls") or []
    ]
    answer = ", ".join(calls) or compact(message.get("content"))
    return sent, answer


def step_texts(step: StepRecord) -> tuple[str, str]:
    data_in, data_out = step.input, step.output
    if step.kind == StepKind.LLM:
        sent, answer = llm_texts(step)
    elif step.kind == StepKind.TOOL and isinstance(data_in, dict):
        sent = compact(data_in.get("arguments"))
        out = data_out if isinstance(data_out, dict) else {}
        answer = f"error: {out['error']}" if out.get("error") else compact(out.get("output"))
    elif step.kind == StepKind.AGENT and isinstance(data_in, dict):
        sent = compact(data_in.get("input"))
        answer = compact((data_out or {}).get("result") if isinstance(data_out, dict) else None)
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


def tokens_of(step: StepRecord) -> int | None:
    usage = step.meta.get("total_usage") if step.kind == StepKind.AGENT else None
    usage = usage or step.meta.get("usage")
    if not isinstance(usage, dict):
        return None
    return int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))


@dataclass
class Node:
    key: str
    step: StepRecord | None  # None: an agent whose own record is not written (yet)
    children: list["Node"] = field(default_factory=list)

    def first_position(self) -> int:
        own = [self.step.position] if self.step else []
        return min(own + [c.first_position() for c in self.children])

    def first_start(self) -> datetime | None:
        starts = [self.step.started_at] if self.step else []
        starts += [s for c in self.children if (s := c.first_start())]
        return min(starts, default=None)

    def tokens(self) -> int | None:
        own = tokens_of(self.step) if self.step else None
        if own is not None:
            return own
        counts = [t for c in self.children if (t := c.tokens()) is not None]
        return sum(counts) if counts else None


def step_tree(steps: list[StepRecord]) -> list[Node]:
    """Steps as a forest: an agent's model and tool calls under the agent. The agent's own
    record is committed after its children, so the tree is built from keys."""
    nodes = {s.key: Node(s.key, s) for s in steps}
    agents = {s.key for s in steps if s.kind == StepKind.AGENT}
    for step in steps:  # calls of an agent still running (or that failed) have no parent
        match = AGENT_CHILD.match(step.key)
        if (
            match
            and step.kind in (StepKind.LLM, StepKind.TOOL)
            and not any(step.key.startswith(f"{a}/") for a in agents)
        ):
            agents.add(match["agent"])
            nodes.setdefault(match["agent"], Node(match["agent"], None))
    roots = []
    for key, node in nodes.items():
        parents = [a for a in agents if key.startswith(f"{a}/")]
        if parents:
            nodes[max(parents, key=len)].children.append(node)
        else:
            roots.append(node)

    def order(level: list[Node]) -> list[Node]:
        for node in level:
            node.children = order(node.children)
        return sorted(level, key=Node.first_position)

    return order(roots)


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
        steps = list(run.steps.all())
        self.stdout.write("")
        if steps:
            self.stdout.write("\n".join(self.steps_table(step_tree(steps))))
        else:
            self.stdout.write("No steps recorded yet.")
        waits = list(run.waits.all())
        if waits:
            self.stdout.write("")
            self.stdout.write("\n".join(self.waits_table(waits)))

    def header(self, run: WorkflowRun) -> list[str]:
        tokens = sum(v for v in run.usage.values() if isinstance(v, int)) if run.usage else 0
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

    def steps_table(self, roots: list[Node]) -> list[str]:
        rows: list[tuple[str, ...]] = []

        def visit(node: Node, depth: int) -> None:
            step = node.step
            key = "  " * depth + node.key
            if step is None:
                rows.append((key, "agent", "unfinished", "", _tokens(node), "", ""))
            else:
                start = node.first_start() or step.started_at
                ms = (step.finished_at - start).total_seconds() * 1000
                sent, answer = step_texts(step)
                rows.append((key, step.kind, step.status, f"{ms:.1f}", _tokens(node), sent, answer))
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

    def waits_table(self, waits: list[Wait]) -> list[str]:
        rows = [
            (
                w.key,
                w.kind,
                w.status,
                when(w.deadline),
                w.resumed_by.get_username() if w.resumed_by else "—",
                when(w.resumed_at),
            )
            for w in waits
        ]
        head = ("wait", "kind", "status", "deadline", "decided by", "at")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        return [
            "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
            for row in [head, tuple("-" * w for w in widths), *rows]
        ]


def _tokens(node: Node) -> str:
    tokens = node.tokens()
    return "" if tokens is None else str(tokens)
