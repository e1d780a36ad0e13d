"""A run's flat step records as the tree the agent runtime implies.

An agent step `K` owns the steps `K/llm/<n>` and `K/tool/<n>/<name>` that ran inside it
(`agents.transcript` has the format). The agent's own record is committed last, so its
children come before it in position order, and an agent still in its loop (or one
whose model call failed) has children but no record: the tree gives it a node all the
same. The console, `manage.py trace` and the apps' pages all read runs through this.
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Self, TypeVar

from workflows.agents.transcript import agent_call_key_parse, agent_calls_prefix
from workflows.engine.selectors import usage_total
from workflows.models import StepKind, StepRecord, StepStatus, Wait

UNFINISHED_AGENT_STATUS = "running"
"""The status of an agent's node while it has no record of its own."""


@dataclass(eq=False)
class StepNode:
    """A step record, an agent with no record yet, or an open wait (no record until it
    is resumed). Once arranged, an agent's `started_at` and `position` are those of the
    first step of its subtree."""

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
    children: list[Self] = field(default_factory=list)

    @classmethod
    def of_record(cls, record: StepRecord) -> Self:
        return cls(
            key=record.key,
            kind=record.kind,
            status=record.status,
            started_at=record.started_at,
            finished_at=record.finished_at,
            position=record.position,
            record=record,
        )

    @property
    def meta(self) -> dict[str, Any]:
        return (self.record.meta or {}) if self.record else {}

    @property
    def is_error(self) -> bool:
        """Failed, or a tool call that answered the model with an error."""
        return self.status == StepStatus.FAILED or bool(self.meta.get("error"))

    @property
    def tokens(self) -> int | None:
        """The model tokens this step's record counts: a model call's, or all of an
        agent's; None for other steps and for an agent with no record yet."""
        if self.kind == StepKind.LLM:
            usage = self.meta.get("usage")
        elif self.kind == StepKind.AGENT:
            usage = self.meta.get("total_usage")
        else:
            return None
        return usage_total(usage) if isinstance(usage, dict) else None

    def tokens_so_far(self) -> int | None:
        """`tokens`, or for an agent with no record yet, the sum of its calls so far."""
        if self.record is not None:
            return self.tokens
        counts = [t for child in self.children if (t := child.tokens_so_far()) is not None]
        return sum(counts) if counts else None

    def descendants(self) -> list[Self]:
        """The subtree below this node, in display order."""
        return steps_flat(self.children, depth=self.depth + 1)


N = TypeVar("N", bound=StepNode)


def _agent_of(key: str, agent_keys: set[str]) -> str | None:
    """The innermost agent whose calls' prefix `key` has."""
    owners = [a for a in agent_keys if key.startswith(agent_calls_prefix(a))]
    return max(owners, key=len, default=None)


def step_tree(nodes: list[N]) -> list[N]:
    """Nest model and tool calls under their agents (adding a node of the same class,
    with no record, for an agent that has none yet); returns the top-level nodes in
    the order they started, each level ordered likewise."""
    by_key = {n.key: n for n in nodes}
    agent_keys = {n.key for n in nodes if n.kind == StepKind.AGENT}
    for node in sorted(nodes, key=lambda n: n.position):
        call = agent_call_key_parse(node.key)
        if call and _agent_of(node.key, agent_keys) is None and call.agent_key not in by_key:
            agent_keys.add(call.agent_key)
            by_key[call.agent_key] = type(node)(
                key=call.agent_key,
                kind=StepKind.AGENT,
                status=UNFINISHED_AGENT_STATUS,
                started_at=node.started_at,
                finished_at=None,
                position=node.position,
            )
    roots: list[N] = []
    for node in sorted(by_key.values(), key=lambda n: n.position):
        parent_key = _agent_of(node.key, agent_keys)
        if parent_key is None:
            roots.append(node)
        else:
            node.parent_key = parent_key
            by_key[parent_key].children.append(node)

    def settle(node: StepNode) -> None:
        for child in node.children:
            settle(child)
            node.position = min(node.position, child.position)
            node.started_at = min(node.started_at, child.started_at)
        node.children.sort(key=lambda c: (c.started_at, c.position))

    for root in roots:
        settle(root)
    roots.sort(key=lambda n: (n.position, n.started_at))
    return roots


def steps_flat(nodes: list[N], depth: int = 0) -> list[N]:
    """The tree's nodes in display order (each before its children), with their depth."""
    rows: list[N] = []
    for node in nodes:
        node.depth = depth
        rows.append(node)
        rows.extend(steps_flat(node.children, depth + 1))
    return rows


def step_find(nodes: list[N], key: str) -> N | None:
    """The node at `key` anywhere in the tree."""
    return next((n for n in steps_flat(nodes) if n.key == key), None)
