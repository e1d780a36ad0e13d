"""The structures that cross the agent loop: requests, responses, tool calls, results.

Messages are kept in the Chat Completions wire shape (`{"role": ..., "content": ...,
"tool_calls": [...]}`) so that a trace shows exactly what a model was sent.
"""

from typing import Any

from pydantic import BaseModel, Field

Message = dict[str, Any]


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


class ModelRequest(BaseModel):
    """One model call. `tools` and `response_format` are in the OpenAI wire shape."""

    agent_id: str
    model: str
    messages: list[Message]
    tools: list[dict[str, Any]] = Field(default_factory=list)
    response_format: dict[str, Any] | None = None


class ModelResponse(BaseModel):
    """The assistant's turn: `message` may carry text, tool calls, or both."""

    message: Message
    finish_reason: str | None = None
    model: str
    usage: Usage = Field(default_factory=Usage)
    latency_ms: float = 0.0

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return self.message.get("tool_calls") or []


class ToolCallRecord(BaseModel):
    id: str
    name: str
    arguments: str
    output: Any = None
    error: str | None = None


class AgentResult(BaseModel):
    """What `ctx.step.agent_invoke_and_wait` returns."""

    agent_id: str
    result: Any
    text: str | None = None
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    messages: list[Message] = Field(default_factory=list)
