"""The console's presentation: display text (durations, times ago, indented JSON), and
a run's trace as the timeline page shows it. Reads come from `selectors`, the step
tree from `step_tree`, the agent transcript format from `agents.transcript`.
"""

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.utils import timezone
from django.utils.timesince import timesince

from workflows.agents.contexts import records_expanded
from workflows.agents.transcript import (
    AgentStepRecorded,
    ChatMessage,
    ToolCallRecorded,
    agent_conversation,
    agent_step_recorded,
    llm_messages_sent,
    llm_reply,
    llm_tools_offered,
    tool_call_recorded,
)
from workflows.console.step_tree import StepNode, step_tree, steps_flat
from workflows.engine.selectors import (
    WaitingFor,
    run_get,
    run_open_wait,
    run_steps,
    run_waits,
    usage_cost,
)
from workflows.models import (
    EXECUTING_RUN_STATUSES,
    RunStatus,
    StepKind,
    StepStatus,
    Wait,
    WorkflowRun,
)

_MIN_BAR_PCT = 0.6


# --- display text ------------------------------------------------------------------------


def pretty_json(value: Any) -> str:
    """Indented JSON for display; a JSON text is parsed first so it is indented too."""
    if isinstance(value, str):
        text = value
        try:
            value = json.loads(text)
        except ValueError:
            return text
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


def run_duration_text(run: WorkflowRun, now: datetime | None = None) -> str:
    """How long the run took, or has taken so far; `—` before it started."""
    if run.started_at is None:
        return "—"
    end = run.finished_at or now or timezone.now()
    return duration_text((end - run.started_at).total_seconds())


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


def waiting_for_text(waiting: WaitingFor) -> str:
    """`waiting for Stripe (attempt 6, next at 14:02:10 UTC)`: what the console, the API,
    admin and `ops_status` say of a run parked until its step's next attempt."""
    circuit = ", circuit open" if waiting.circuit_open else ""
    return (
        f"waiting for {waiting.name} (attempt {waiting.attempt}{circuit}, "
        f"next at {waiting.next_at.astimezone(UTC):%H:%M:%S} UTC)"
    )


def message_shown(message: ChatMessage) -> ChatMessage:
    """A chat message as the console shows it: JSON (a tool's answer, a structured
    reply, tool call arguments) indented."""
    content = message.content
    if message.role == "tool" or content.lstrip().startswith(("{", "[")):
        content = pretty_json(content)
    calls = tuple(replace(c, arguments=pretty_json(c.arguments)) for c in message.tool_calls)
    return replace(message, content=content, tool_calls=calls)


# --- a run's trace -----------------------------------------------------------------------


@dataclass(eq=False)
class TraceStep(StepNode):
    """One row of the timeline, with its bar and what its detail panel shows."""

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
    def cost(self) -> Decimal | None:
        return usage_cost(self.meta.get("usage")) if self.kind == StepKind.LLM else None

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
    def messages(self) -> list[ChatMessage]:
        """The conversation: what an llm step sent, or an agent step's whole exchange."""
        if self.kind == StepKind.LLM:
            messages = llm_messages_sent(self.input)
        elif self.kind == StepKind.AGENT:
            messages = agent_conversation(self.output)
        else:
            messages = []
        return [message_shown(m) for m in messages]

    @property
    def reply(self) -> ChatMessage | None:
        """The assistant turn an llm step received."""
        reply = llm_reply(self.output) if self.kind == StepKind.LLM else None
        return message_shown(reply) if reply else None

    @property
    def offered_tools(self) -> list[str]:
        return llm_tools_offered(self.input) if self.kind == StepKind.LLM else []

    @property
    def tool_call(self) -> ToolCallRecorded:
        return tool_call_recorded(self.key, self.input, self.output)

    @property
    def tool_arguments_json(self) -> str:
        return pretty_json(self.tool_call.arguments)

    @property
    def tool_result_json(self) -> str:
        return pretty_json(self.tool_call.output)

    @property
    def agent_step(self) -> AgentStepRecorded:
        return agent_step_recorded(self.input, self.output, self.meta)

    @property
    def agent_result_json(self) -> str:
        return pretty_json(self.agent_step.result)


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
        return self.run.status in EXECUTING_RUN_STATUSES

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
    waits. Two queries after the run itself: the steps and the waits.
    `RunNotFoundError` if there is no such run."""
    now = now or timezone.now()
    run = run_get(run_id=run_id)
    waits = run_waits(run)
    open_wait = run_open_wait(waits)

    steps = [TraceStep.of_record(r) for r in records_expanded(run_steps(run))]
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
    roots = step_tree(steps)
    rows = steps_flat(roots)

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
