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

That is format 1, where each model call repeated the whole conversation so far, the
system prompt and the tool schemas (about 24 KB per order). Format 2 (`"format": 2` in
each record) keeps each thing once:
- a model call's input is `{"format", "agent_id", "model", "context", "added"}`:
  `context` is the hash of the system prompt, tool schemas and response format, stored
  once (`AgentContext`); `added` holds only the messages recorded nowhere else (the
  user's input, a corrective turn): the model's replies are the model calls' outputs,
  the tool results the tool calls' outputs;
- a tool call's input is `{"format", "tool", "call_id"}`: its arguments are in the
  model's reply that asked for it;
- the agent's step keeps `{"format", "agent"}` → `{"format"}`: its result is the last
  reply (parsed when it is JSON).

`transcript_expand` rebuilds format 1 from format 2, so every reader (and replay,
which needs only outputs) reads old and new runs alike.

Messages are in the Chat Completions wire shape. This module builds the keys (for the
runtime in `agent.py`) and parses keys and records (for the console, `manage.py trace`
and any app that shows what an agent did). It reads plain values, not the database.
"""

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

LEAN_FORMAT = 2
"""The `format` of records that keep each part of the transcript once."""

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


# --- format 2: each thing once --------------------------------------------------------


def context_digest(content: dict[str, Any]) -> str:
    """The hash an agent's context (system prompt, tools, response format) is stored by."""
    # 128 bits: a handful of agent versions can never collide, and every model call's
    # step names it.
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:32]


def assistant_message(message: dict[str, Any]) -> dict[str, Any]:
    """The model's turn as it is sent back in the next request, as the API accepts it:
    `content` may be null only beside tool calls (a model that answers nothing, or
    refuses, gets an empty text), and an empty `tool_calls` is not sent."""
    if message.get("tool_calls"):
        return message
    shaped = {k: v for k, v in message.items() if k != "tool_calls"}
    if shaped.get("content") is None:
        shaped["content"] = ""
    return shaped


def tool_message(call_id: str, step_output: Any) -> dict[str, Any]:
    """The tool's answer as the model is sent it, from the tool call's output."""
    out = _dict(step_output)
    error = out.get("error")
    content = {"error": error} if error else out.get("output")
    return {"role": "tool", "tool_call_id": call_id, "content": json.dumps(content)}


def is_lean(step_input: Any) -> bool:
    return _dict(step_input).get("format") == LEAN_FORMAT


@dataclass(frozen=True)
class StepPayload:
    """A step record's parts, as `transcript_expand` reads them."""

    key: str
    kind: str
    input: Any
    output: Any
    meta: Any


@dataclass
class _AgentState:
    messages: list[dict[str, Any]] | None = None
    calls: dict[str, str] | None = None  # tool call id -> the arguments the model sent
    tool_calls: list[dict[str, Any]] | None = None
    text: str | None = None


def transcript_expand(
    steps: Iterable[StepPayload], contexts: dict[str, dict[str, Any]]
) -> dict[str, tuple[Any, Any]]:
    """The (input, output) in format 1 of every format-2 step among `steps` (in position
    order), by key; `contexts` maps context hashes to their content (one not found shows
    an empty system prompt). Format-1 steps are not in the result: they are read as
    they are."""
    agents: dict[str, _AgentState] = {}
    expanded: dict[str, tuple[Any, Any]] = {}
    for step in steps:
        parsed = agent_call_key_parse(step.key)
        agent_key = parsed.agent_key if parsed else step.key
        state = agents.setdefault(agent_key, _AgentState())
        data_in = _dict(step.input)
        if parsed is not None and parsed.kind == "llm":
            if is_lean(data_in):
                context = contexts.get(str(data_in.get("context")), {})
                if state.messages is None:
                    state.messages = [{"role": "system", "content": context.get("system", "")}]
                state.messages += [m for m in data_in.get("added") or [] if isinstance(m, dict)]
                full_input = {
                    "agent_id": data_in.get("agent_id"),
                    "model": data_in.get("model"),
                    "messages": list(state.messages),
                    "tools": context.get("tools", []),
                    "response_format": context.get("response_format"),
                }
                expanded[step.key] = (full_input, step.output)
            else:
                state.messages = list(chat_messages_raw(data_in.get("messages")))
            reply = _dict(step.output).get("message")
            if isinstance(reply, dict):
                state.messages.append(assistant_message(reply))
                state.text = reply.get("content") or ""
                state.calls = {
                    str(c.get("id", "")): str((c.get("function") or {}).get("arguments", ""))
                    for c in reply.get("tool_calls") or []
                    if isinstance(c, dict)
                }
        elif parsed is not None and parsed.kind == "tool":
            call_id = str(data_in.get("call_id") or "")
            raw = (state.calls or {}).get(call_id, "")
            if is_lean(data_in):
                try:
                    arguments: Any = json.loads(raw)
                except ValueError:
                    arguments = raw
                full_input = {
                    "tool": data_in.get("tool"),
                    "call_id": call_id,
                    "arguments": arguments,
                }
                expanded[step.key] = (full_input, step.output)
            if state.messages is not None:
                state.messages.append(tool_message(call_id, step.output))
            out = _dict(step.output)
            state.tool_calls = [
                *(state.tool_calls or []),
                {
                    "id": call_id,
                    "name": str(data_in.get("tool") or parsed.tool_name),
                    "arguments": raw,
                    "output": out.get("output"),
                    "error": out.get("error"),
                },
            ]
        elif is_lean(data_in) and "agent" in data_in:
            messages = state.messages or []
            first_user = next((m for m in messages if m.get("role") == "user"), {})
            full_output = None
            if step.output is not None:
                full_output = {
                    "result": _dict(step.output).get("result", _parsed(state.text)),
                    "text": state.text,
                    "tool_calls": state.tool_calls or [],
                    "usage": _dict(step.meta).get("total_usage", {}),
                    "messages": messages,
                }
            expanded[step.key] = (
                {"agent": data_in.get("agent"), "input": first_user.get("content")},
                full_output,
            )
    return expanded


def chat_messages_raw(messages: Any) -> list[dict[str, Any]]:
    """A wire message list's dict messages (anything else: none)."""
    if not isinstance(messages, list):
        return []
    return [m for m in messages if isinstance(m, dict)]


def _parsed(text: str | None) -> Any:
    """The final answer as the agent returned it: JSON parsed, other text as it is."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
