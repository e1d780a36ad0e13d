"""Reads for the console pages: the runs list, one run's trace, its waits.

Nothing here writes. The trace arranges a run's flat step records as the tree the
agent runtime implies: an agent step `K` owns the steps `K/llm/<n>` and
`K/tool/<n>/<name>` that ran inside it (the agent's own record is committed last, so
its children come before it in position order).
"""

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import BigIntegerField, Count, Prefetch, Q, QuerySet, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.http import Http404
from django.utils import timezone
from django.utils.timesince import timesince

from .agents.pricing import COST_KEY, usd
from .models import (
    RunStatus,
    StepKind,
    StepRecord,
    StepStatus,
    Wait,
    WaitStatus,
    WorkflowRun,
)

LIVE_RUN_STATUSES = (RunStatus.PENDING, RunStatus.RUNNING)
# `K/llm/3` and `K/tool/2/charge`: steps an agent at key K ran.
_AGENT_CHILD = re.compile(r"^(?P<parent>.+)/(?:llm/\d+|tool/\d+/[^/]+)$")
_MIN_BAR_PCT = 0.6


def pretty_json(value: Any) -> str:
    """Indented JSON for display; a JSON text is parsed first so it is indented too."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def duration_text(seconds: float | None) -> str:
    """A short human duration: `840 ms`, `2.4 s`, `3 m 12 s`, `1 h 04 m`, `2 d 3 h`."""
    if seconds is None:
        return "—"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} m {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} m"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def ago_text(moment: datetime | None, now: datetime | None = None) -> str:
    """`just now`, `42 s ago`, `3 minutes ago`, `2 days, 4 hours ago`."""
    if moment is None:
        return ""
    now = now or timezone.now()
    seconds = (now - moment).total_seconds()
    if seconds < 5:
        return "just now"
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    return f"{timesince(moment, now, depth=2)} ago"


def usage_total(usage: dict[str, Any] | None) -> int:
    """The tokens in a usage record (a step's, an agent's or a run's)."""
    usage = usage or {}
    return sum(v for k, v in usage.items() if k.endswith("_tokens") and isinstance(v, int))


def usage_cost(usage: dict[str, Any] | None) -> Decimal | None:
    """What the model calls of a usage record cost, in dollars; None when nothing was
    priced (no call, or only unpriced models)."""
    microusd = (usage or {}).get(COST_KEY)
    return usd(microusd) if microusd else None


def runs_cost_total(runs: QuerySet[WorkflowRun] | None = None) -> tuple[int, Decimal]:
    """(tokens, dollars) spent by `runs` (every run by default), summed in the database."""
    runs = WorkflowRun.objects.all() if runs is None else runs
    totals = runs.aggregate(
        prompt=Sum(Cast(KT("usage__prompt_tokens"), BigIntegerField())),
        completion=Sum(Cast(KT("usage__completion_tokens"), BigIntegerField())),
        cost=Sum(Cast(KT(f"usage__{COST_KEY}"), BigIntegerField())),
    )
    return (totals["prompt"] or 0) + (totals["completion"] or 0), usd(totals["cost"])


# --- the runs list ---------------------------------------------------------------------


def _runs_filtered(*, workflow_id: str = "", search: str = "") -> QuerySet[WorkflowRun]:
    runs = WorkflowRun.objects.all()
    if workflow_id:
        runs = runs.filter(workflow_id=workflow_id)
    search = search.strip()
    if search:
        runs = runs.filter(Q(id__istartswith=search) | Q(workflow_id__icontains=search))
    return runs


def runs_list(
    *, status: str = "", workflow_id: str = "", search: str = ""
) -> QuerySet[WorkflowRun]:
    """Runs newest first, filtered by status, workflow id, and a search that matches a
    run id prefix or part of a workflow id."""
    runs = _runs_filtered(workflow_id=workflow_id, search=search)
    if status:
        runs = runs.filter(status=status)
    return runs.order_by("-created_at")


def run_status_counts(*, workflow_id: str = "", search: str = "") -> dict[str, int]:
    """How many runs are in each status (and `all`), under the same workflow/search
    filter as the list."""
    rows = (
        _runs_filtered(workflow_id=workflow_id, search=search)
        .order_by()
        .values("status")
        .annotate(n=Count("pk"))
    )
    counts = {status.value: 0 for status in RunStatus}
    for row in rows:
        counts[row["status"]] = row["n"]
    counts["all"] = sum(counts.values())
    return counts


def run_workflow_ids() -> list[str]:
    """Every workflow id that has runs, for the list's filter."""
    return sorted(WorkflowRun.objects.order_by().values_list("workflow_id", flat=True).distinct())


# --- one run ---------------------------------------------------------------------------


def run_get_with_steps(*, run_id: UUID | str) -> WorkflowRun:
    """The run with its steps in execution order and its waits (with who resumed them),
    in three queries; `Http404` if there is no such run (or the id is malformed)."""
    runs = WorkflowRun.objects.prefetch_related(
        Prefetch("steps", queryset=StepRecord.objects.order_by("position")),
        Prefetch("waits", queryset=Wait.objects.select_related("resumed_by").order_by("position")),
    )
    try:
        return runs.get(pk=run_id)
    except (WorkflowRun.DoesNotExist, ValueError, TypeError, DjangoValidationError) as exc:
        raise Http404(f"No run {run_id}") from exc


def run_get(*, run_id: UUID | str) -> WorkflowRun:
    try:
        return WorkflowRun.objects.get(pk=run_id)
    except (WorkflowRun.DoesNotExist, ValueError) as exc:
        raise Http404(f"No run {run_id}") from exc


def run_waits(run: WorkflowRun) -> list[Wait]:
    """The run's waits, oldest first, with who resumed them."""
    return list(run.waits.select_related("resumed_by").order_by("created_at"))


def run_open_wait(waits: list[Wait]) -> Wait | None:
    """The wait a suspended run is parked on, if any."""
    return next((w for w in waits if w.status == WaitStatus.WAITING), None)


@dataclass
class TraceStep:
    """One row of the timeline: a step record, an agent still in progress (no record
    yet), or an open wait (no record until it is resumed)."""

    key: str
    kind: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    position: int
    record: StepRecord | None = None
    wait: Wait | None = None
    parent_key: str | None = None
    depth: int = 0
    children: list["TraceStep"] = field(default_factory=list)
    offset_pct: float = 0.0
    width_pct: float = 0.0

    # -- what the row shows ---------------------------------------------------------

    @property
    def label_prefix(self) -> str:
        return f"{self.parent_key}/" if self.parent_key else ""

    @property
    def label(self) -> str:
        return self.key[len(self.label_prefix) :]

    @property
    def is_open(self) -> bool:
        """Still going: an agent whose own record is not committed, or an open wait."""
        return self.finished_at is None

    @property
    def is_error(self) -> bool:
        if self.status == StepStatus.FAILED:
            return True
        return bool(self.record and (self.record.meta or {}).get("error"))

    @property
    def duration_ms(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds() * 1000

    @property
    def duration(self) -> str:
        if self.finished_at is None:
            return "waiting" if self.wait else "running"
        return duration_text((self.finished_at - self.started_at).total_seconds())

    @property
    def meta(self) -> dict[str, Any]:
        return (self.record.meta or {}) if self.record else {}

    @property
    def cost(self) -> Decimal | None:
        return usage_cost(self.meta.get("usage")) if self.kind == StepKind.LLM else None

    @property
    def tokens(self) -> int | None:
        if self.kind == StepKind.LLM:
            return usage_total(self.meta.get("usage"))
        if self.kind == StepKind.AGENT:
            return usage_total(self.meta.get("total_usage")) or None
        return None

    # -- what the detail panel shows ------------------------------------------------

    @property
    def input(self) -> Any:
        if self.record is not None:
            return self.record.input
        return self.wait.data if self.wait else None

    @property
    def output(self) -> Any:
        return self.record.output if self.record else None

    @property
    def meta_json(self) -> str:
        return pretty_json(self.meta)

    @property
    def input_json(self) -> str:
        return pretty_json(self.input)

    @property
    def output_json(self) -> str:
        return pretty_json(self.output)

    @property
    def messages(self) -> list["ChatMessage"]:
        """The conversation: what an llm step sent, or an agent step's whole exchange."""
        if self.kind == StepKind.LLM and isinstance(self.input, dict):
            return chat_messages(self.input.get("messages"))
        if self.kind == StepKind.AGENT and isinstance(self.output, dict):
            return chat_messages(self.output.get("messages"))
        return []

    @property
    def reply(self) -> "ChatMessage | None":
        """The assistant turn an llm step received."""
        if self.kind == StepKind.LLM and isinstance(self.output, dict):
            message = self.output.get("message")
            if isinstance(message, dict):
                return ChatMessage.from_wire(message)
        return None

    @property
    def offered_tools(self) -> list[str]:
        if self.kind != StepKind.LLM or not isinstance(self.input, dict):
            return []
        return [
            str((t.get("function") or {}).get("name", "?"))
            for t in self.input.get("tools") or []
            if isinstance(t, dict)
        ]

    @property
    def tool_arguments_json(self) -> str:
        data = self.input if isinstance(self.input, dict) else {}
        return pretty_json(data.get("arguments"))

    @property
    def tool_result_json(self) -> str:
        data = self.output if isinstance(self.output, dict) else {}
        return pretty_json(data.get("output"))

    @property
    def tool_error(self) -> str:
        data = self.output if isinstance(self.output, dict) else {}
        return str(data.get("error") or "")

    @property
    def tool_name(self) -> str:
        data = self.input if isinstance(self.input, dict) else {}
        return str(data.get("tool") or self.key.rsplit("/", 1)[-1])

    @property
    def agent_result_json(self) -> str:
        data = self.output if isinstance(self.output, dict) else {}
        return pretty_json(data.get("result"))

    @property
    def agent_id(self) -> str:
        if isinstance(self.input, dict) and self.input.get("agent"):
            return str(self.input["agent"])
        return str(self.meta.get("agent", ""))


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class ChatMessage:
    role: str
    content: str
    tool_calls: list[ToolCall]
    tool_call_id: str = ""

    @classmethod
    def from_wire(cls, message: dict[str, Any]) -> "ChatMessage":
        content = message.get("content")
        if isinstance(content, list):  # content parts
            content = "\n".join(
                str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content
            )
        text = "" if content is None else str(content)
        if message.get("role") == "tool" or text.lstrip().startswith(("{", "[")):
            text = pretty_json(text)
        calls = []
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            calls.append(
                ToolCall(
                    id=str(call.get("id", "")),
                    name=str(function.get("name", "?")),
                    arguments=pretty_json(function.get("arguments", "")),
                )
            )
        return cls(
            role=str(message.get("role", "?")),
            content=text,
            tool_calls=calls,
            tool_call_id=str(message.get("tool_call_id") or ""),
        )


def chat_messages(messages: Any) -> list[ChatMessage]:
    if not isinstance(messages, list):
        return []
    return [ChatMessage.from_wire(m) for m in messages if isinstance(m, dict)]


@dataclass
class TimelineTick:
    offset_pct: float
    label: str


@dataclass
class RunTrace:
    """A run, its steps as a tree (and flattened in display order), and its waits."""

    run: WorkflowRun
    roots: list[TraceStep]
    rows: list[TraceStep]
    waits: list[Wait]
    open_wait: Wait | None
    span_start: datetime
    span_end: datetime
    ticks: list[TimelineTick]

    @property
    def is_live(self) -> bool:
        return self.run.status in LIVE_RUN_STATUSES

    def step(self, key: str | None) -> TraceStep | None:
        if not key:
            return None
        return next((row for row in self.rows if row.key == key), None)

    def default_step(self) -> TraceStep | None:
        """What to show when no step is chosen: the step that failed, or the open wait."""
        failed = [row for row in self.rows if row.status == StepStatus.FAILED]
        if failed:
            return failed[-1]
        return next((row for row in self.rows if row.wait is not None and row.is_open), None)


def _step_from_record(record: StepRecord) -> TraceStep:
    return TraceStep(
        key=record.key,
        kind=record.kind,
        status=record.status,
        started_at=record.started_at,
        finished_at=record.finished_at,
        position=record.position,
        record=record,
    )


def _parent_of(key: str, agent_keys: set[str]) -> str | None:
    """The innermost agent whose `K/` prefix `key` has."""
    best = None
    for agent_key in agent_keys:
        if key.startswith(agent_key + "/") and (best is None or len(agent_key) > len(best)):
            best = agent_key
    return best


def _arrange(steps: list[TraceStep]) -> list[TraceStep]:
    """Nest llm/tool steps under their agents; returns the top-level steps in the
    order they started."""
    by_key = {s.key: s for s in steps}
    agent_keys = {s.key for s in steps if s.kind == StepKind.AGENT}
    # An agent still in its loop (or one whose model call failed) has children but no
    # record of its own yet: give it a row so its steps still nest.
    for s in sorted(steps, key=lambda s: s.position):
        match = _AGENT_CHILD.match(s.key)
        if match and _parent_of(s.key, agent_keys) is None and match["parent"] not in by_key:
            parent = match["parent"]
            agent_keys.add(parent)
            by_key[parent] = TraceStep(
                key=parent,
                kind=StepKind.AGENT,
                status="running",
                started_at=s.started_at,
                finished_at=None,
                position=s.position,
            )
    roots: list[TraceStep] = []
    for s in sorted(by_key.values(), key=lambda s: s.position):
        parent_key = _parent_of(s.key, agent_keys)
        if parent_key is None:
            roots.append(s)
        else:
            s.parent_key = parent_key
            by_key[parent_key].children.append(s)

    def settle(node: TraceStep) -> tuple[int, datetime]:
        """(first position, start) of a subtree; an agent spans its children."""
        first_position, start = node.position, node.started_at
        for child in node.children:
            child_position, child_start = settle(child)
            first_position = min(first_position, child_position)
            start = min(start, child_start)
        node.children.sort(key=lambda c: (c.started_at, c.position))
        node.started_at = start
        node.position = first_position
        return first_position, start

    for root in roots:
        settle(root)
    roots.sort(key=lambda s: (s.position, s.started_at))
    return roots


def _flatten(nodes: list[TraceStep], depth: int = 0) -> list[TraceStep]:
    rows = []
    for node in nodes:
        node.depth = depth
        rows.append(node)
        rows.extend(_flatten(node.children, depth + 1))
    return rows


def _ticks(start: datetime, end: datetime, count: int = 2) -> list[TimelineTick]:
    total = (end - start).total_seconds()
    return [
        TimelineTick(
            offset_pct=100 * i / count,
            label="0" if i == 0 else duration_text(total * i / count),
        )
        for i in range(count + 1)
    ]


def run_trace(*, run_id: UUID | str, now: datetime | None = None) -> RunTrace:
    """The run, its steps arranged as a tree with timeline offsets (in % of the run's
    span, from its start to its end, or to now while it is not finished), and its
    waits. Two queries after the run itself: the steps and the waits."""
    now = now or timezone.now()
    run = run_get(run_id=run_id)
    records = list(StepRecord.objects.filter(run=run).order_by("position"))
    waits = run_waits(run)
    open_wait = run_open_wait(waits)

    steps = [_step_from_record(r) for r in records]
    recorded = {s.key for s in steps}
    if open_wait is not None and open_wait.key not in recorded:
        steps.append(
            TraceStep(
                key=open_wait.key,
                kind=open_wait.kind,
                status="waiting",
                started_at=open_wait.created_at,
                finished_at=None,
                position=open_wait.position,
                wait=open_wait,
            )
        )
    for s in steps:
        if s.wait is None:
            s.wait = next((w for w in waits if w.key == s.key), None)
    roots = _arrange(steps)
    rows = _flatten(roots)

    finished = run.finished_at is not None and run.status not in (
        RunStatus.PENDING,
        RunStatus.RUNNING,
        RunStatus.SUSPENDED,
    )
    starts = [run.started_at or run.created_at, *(s.started_at for s in rows)]
    span_start = min(starts)
    span_end = run.finished_at if finished and run.finished_at else now
    span_end = max([span_end, *(s.finished_at for s in rows if s.finished_at)])
    total = max((span_end - span_start).total_seconds(), 1e-6)
    for s in rows:
        end = s.finished_at or span_end
        s.offset_pct = round(100 * (s.started_at - span_start).total_seconds() / total, 3)
        width = 100 * (end - s.started_at).total_seconds() / total
        s.width_pct = round(max(width, _MIN_BAR_PCT), 3)
        if s.offset_pct + s.width_pct > 100:
            s.offset_pct = round(max(0.0, 100 - s.width_pct), 3)

    return RunTrace(
        run=run,
        roots=roots,
        rows=rows,
        waits=waits,
        open_wait=open_wait,
        span_start=span_start,
        span_end=span_end,
        ticks=_ticks(span_start, span_end),
    )


# --- workflows and agents --------------------------------------------------------------


@dataclass
class SchemaField:
    name: str
    type: str
    required: bool
    default: str
    description: str
    constraints: str


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the schema behind a `$ref`, its name) — or (node, "")."""
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        return defs.get(name, {}), name
    return node, ""


def _type_text(node: dict[str, Any], defs: dict[str, Any]) -> str:
    _, ref_name = _resolve(node, defs)
    if ref_name:
        return ref_name
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in node:
            parts = [_type_text(n, defs) for n in node[combinator] if isinstance(n, dict)]
            return " | ".join(dict.fromkeys(p for p in parts if p))
    if "enum" in node:
        return "enum"
    if "const" in node:
        return json.dumps(node["const"])
    kind = node.get("type")
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    if kind == "array":
        items = node.get("items")
        return f"array of {_type_text(items, defs)}" if isinstance(items, dict) else "array"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"object of {_type_text(node['additionalProperties'], defs)}"
    if kind and node.get("format"):
        return f"{kind} ({node['format']})"
    return str(kind or "any")


_CONSTRAINTS = (
    ("exclusiveMinimum", "> {}"),
    ("minimum", "≥ {}"),
    ("exclusiveMaximum", "< {}"),
    ("maximum", "≤ {}"),
    ("minLength", "min length {}"),
    ("maxLength", "max length {}"),
    ("minItems", "min items {}"),
    ("maxItems", "max items {}"),
    ("pattern", "matches {}"),
)


def _constraints_text(node: dict[str, Any], defs: dict[str, Any]) -> str:
    parts = []
    nodes = [node, *(n for n in node.get("anyOf", []) if isinstance(n, dict))]
    for n in nodes:
        n, _ = _resolve(n, defs)
        for key, template in _CONSTRAINTS:
            if key in n:
                value = n[key]
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                parts.append(template.format(value))
        if "enum" in n:
            parts.append("one of " + ", ".join(json.dumps(v) for v in n["enum"]))
    return "; ".join(dict.fromkeys(parts))


def schema_fields(model: Any) -> list[SchemaField]:
    """The top-level fields of a pydantic model, from its JSON schema, for a table."""
    if model is None:
        return []
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    fields = []
    for name, node in (schema.get("properties") or {}).items():
        resolved, _ = _resolve(node, defs)
        fields.append(
            SchemaField(
                name=name,
                type=_type_text(node, defs),
                required=name in required,
                default=json.dumps(node["default"], default=str) if "default" in node else "",
                description=str(node.get("description") or resolved.get("description") or ""),
                constraints=_constraints_text(node, defs),
            )
        )
    return fields


def _example_value(name: str, node: dict[str, Any], defs: dict[str, Any], depth: int) -> Any:
    if "default" in node:
        return node["default"]
    if node.get("examples"):
        return node["examples"][0]
    target, ref_name = _resolve(node, defs)
    if ref_name:
        return _example_object(target, defs, depth + 1)
    if "enum" in node:
        return node["enum"][0]
    if "const" in node:
        return node["const"]
    for combinator in ("anyOf", "oneOf"):
        options = [n for n in node.get(combinator, []) if isinstance(n, dict)]
        options = [n for n in options if n.get("type") != "null"] or options
        if options:
            return _example_value(name, options[0], defs, depth)
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    lowered = name.lower()
    if kind == "string":
        fmt = node.get("format", "")
        if fmt == "email" or "email" in lowered:
            return "customer@example.com"
        if fmt == "date-time":
            return timezone.now().replace(microsecond=0).isoformat()
        if fmt == "date":
            return timezone.now().date().isoformat()
        if fmt == "uuid":
            return "00000000-0000-0000-0000-000000000000"
        if fmt in ("uri", "url"):
            return "https://example.com/"
        if lowered.endswith("_id") or lowered == "id":
            stem = lowered.removesuffix("_id").removesuffix("id").strip("_") or "item"
            stem = {"customer": "cus", "order": "ord"}.get(stem, stem)
            return f"{stem}_{timezone.now():%m%d%H%M%S}"
        if lowered in ("currency", "currency_code"):
            return "usd"
        return node.get("title") or name
    if kind in ("number", "integer"):
        low = node.get("minimum", node.get("exclusiveMinimum"))
        high = node.get("maximum", node.get("exclusiveMaximum"))
        value: float = 49.99 if kind == "number" else 1
        if low is not None and value <= low:
            value = low + 1
        if high is not None and value >= high:
            value = low if low is not None and "minimum" in node else high - 1
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return False
    if kind == "array":
        items = node.get("items")
        return [_example_value(name, items, defs, depth + 1)] if isinstance(items, dict) else []
    if kind == "object":
        return _example_object(node, defs, depth + 1) if node.get("properties") else {}
    return None


def _example_object(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> Any:
    if depth > 4:
        return {}
    return {
        name: _example_value(name, node, defs, depth)
        for name, node in (schema.get("properties") or {}).items()
        if isinstance(node, dict)
    }


def schema_example(model: Any) -> dict[str, Any]:
    """An example payload for a pydantic model: defaults and examples where the schema
    has them, plausible values by type and format elsewhere."""
    schema = model.model_json_schema()
    return _example_object(schema, schema.get("$defs", {}))
