"""The agent runtime: `Agent`, `@tool`, and the `openai` and `simulated` providers."""

from workflows.agents.agent import Agent, AgentInvocation, agents_all
from workflows.agents.providers import SimulatedTurn, TransientModelError, simulated_model
from workflows.agents.tools import Tool, ToolContext, ToolError, tool
from workflows.agents.types import AgentResult, ModelRequest, ModelResponse, ToolCallRecord, Usage

__all__ = [
    "Agent",
    "AgentInvocation",
    "AgentResult",
    "ModelRequest",
    "ModelResponse",
    "SimulatedTurn",
    "Tool",
    "ToolCallRecord",
    "ToolContext",
    "ToolError",
    "TransientModelError",
    "Usage",
    "agents_all",
    "simulated_model",
    "tool",
]
