"""The agent transcript format: how an agent's work is recorded as steps, and read back.

An agent invoked at step key `K` records
- every model call as a step `K/llm/<n>` (kind `llm`): input a `ModelRequest`
  (`{"messages": [...], "tools": [...], ...}`), output a `ModelResponse`
  (`{"message": {...}, "usage": {...}, ...}`);
- every tool call as a step `K/tool/<n>/<name>` (kind `tool`): input
  `{"tool", "call_id", "arguments"}`, output `{"output": ...}` or `{"error": ...}`;
- its result as the step `K` itself (kind `agent`), committed after all of the above:
  input `{"agent", "input"}`, output `{"result", "text", "tool_calls", "usage",
  "messages"}`.

Messages are in the Chat Completions wire shape. This module builds the keys (for the
runtime in `agent.py`) and parses keys and records (for the console, `manage.py trace`
and any app that shows what an agent did). It reads plain values, not the database.
"""

import re
from dataclasses import dataclass
from typing import Any, Literal

_CALL_KEY = re.compile(r"^(?P<agent>.+)/(?:llm/(?P<llm>\d+)|tool/(?P<tool>\d+)/(?P<name>[^/]+))$")


def llm_step_key(agent_key: str, number: int) -> str:
    """The key of an agent's `number`th model call (from 1)."""
    return f"{agent_key}/llm/{number}"


def tool_step_key(agent_key: str, number: int, tool_name: str) -> str:
    """The key of an agent's `number`th tool call (from 1), of the tool `tool_name`
    (already made safe for a key: no `/`)."""
    return f"{agent_key}/tool/{number}/{tool_name}"


def agent_calls_prefix(agent_key: str) -> str:
    """What the keys of the model and tool calls of the agent at `agent_key` start with."""
    return f"{agent_key}/"


@dataclass(frozen=True)
class AgentCallKey:
    """A parsed `K/llm/<n>` or `K/tool/<n>/<name>`."""

    agent_key: str
    kind: Literal["llm", "tool"]
    number: int
    tool_name: str = ""


def agent_call_key_parse(key: str) -> AgentCallKey | None:
    """The agent, kind and number of a model or tool call's step key; None for any
    other key."""
    match = _CALL_KEY.match(key)
    if match is None:
        return None
    if match["llm"] is not None:
        return AgentCallKey(match["agent"], "llm", int(match["llm"]))
    return AgentCallKey(match["agent"], "tool", int(match["tool"]), match["name"])


# --- messages (the Chat Completions wire shape) ---------------------------------------


@dataclass(frozen=True)
class ToolCallRequest:
    """A tool call the model asked for; `arguments` is the JSON text it sent."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str
    tool_calls: tuple[ToolCallRequest, ...] = ()
    tool_call_id: str = ""

    @classmethod
    def from_wire(cls, message: dict[str, Any]) -> "ChatMessage":
        content = message.get("content")
        if isinstance(content, list):  # content parts
            content = "\n".join(
                str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content
            )
        calls = []
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            arguments = function.get("arguments", "")
            calls.append(
                ToolCallRequest(
                    id=str(call.get("id", "")),
                    name=str(function.get("name", "?")),
                    arguments=arguments if isinstance(arguments, str) else str(arguments),
                )
            )
        return cls(
            role=str(message.get("role", "?")),
            content="" if content is None else str(content),
            tool_calls=tuple(calls),
            tool_call_id=str(message.get("tool_call_id") or ""),
        )


def chat_messages(messages: Any) -> list[ChatMessage]:
    """A wire message list as `ChatMessage`s (anything else: none)."""
    if not isinstance(messages, list):
        return []
    return [ChatMessage.from_wire(m) for m in messages if isinstance(m, dict)]


# --- reading the records --------------------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def llm_messages_sent(step_input: Any) -> list[ChatMessage]:
    """The conversation a model call was sent."""
    return chat_messages(_dict(step_input).get("messages"))


def llm_reply(step_output: Any) -> ChatMessage | None:
    """The assistant turn a model call received; None before it answered."""
    message = _dict(step_output).get("message")
    return ChatMessage.from_wire(message) if isinstance(message, dict) else None


def llm_tools_offered(step_input: Any) -> list[str]:
    """The names of the tools a model call offered."""
    return [
        str((t.get("function") or {}).get("name", "?"))
        for t in _dict(step_input).get("tools") or []
        if isinstance(t, dict)
    ]


@dataclass(frozen=True)
class ToolCallRecorded:
    """What a tool call step recorded: `arguments` as parsed JSON (or the raw text the
    model sent when it was not JSON), and `output` or `error`."""

    tool_name: str
    call_id: str
    arguments: Any
    output: Any
    error: str


def tool_call_recorded(key: str, step_input: Any, step_output: Any) -> ToolCallRecorded:
    data_in, data_out = _dict(step_input), _dict(step_output)
    return ToolCallRecorded(
        tool_name=str(data_in.get("tool") or key.rsplit("/", 1)[-1]),
        call_id=str(data_in.get("call_id") or ""),
        arguments=data_in.get("arguments"),
        output=data_out.get("output"),
        error=str(data_out.get("error") or ""),
    )


def agent_conversation(step_output: Any) -> list[ChatMessage]:
    """An agent step's whole exchange with its model."""
    return chat_messages(_dict(step_output).get("messages"))


@dataclass(frozen=True)
class AgentStepRecorded:
    """What an agent's own step recorded: which agent, the text it was given, and its
    result (None before it finished)."""

    agent_id: str
    input: Any
    result: Any


def agent_step_recorded(step_input: Any, step_output: Any, meta: Any) -> AgentStepRecorded:
    data_in = _dict(step_input)
    return AgentStepRecorded(
        agent_id=str(data_in.get("agent") or _dict(meta).get("agent", "")),
        input=data_in.get("input"),
        result=_dict(step_output).get("result"),
    )
