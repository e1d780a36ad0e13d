"""Agents and a workflow the agent-runtime tests drive."""

from pathlib import Path

from pydantic import BaseModel

from tests.workflows.sample_workflows import journal_append
from workflows import RetryPolicy, WorkflowContext, workflow
from workflows.agents import (
    Agent,
    ModelRequest,
    SimulatedTurn,
    ToolContext,
    TransientModelError,
    simulated_model,
    tool,
)

FAST_MODEL_RETRY = RetryPolicy(
    max_attempts=2, initial_interval=0.01, retry_on=(TransientModelError,)
)


class AddInput(BaseModel):
    a: int
    b: int


class Sum(BaseModel):
    sum: int


class ChargeInput(BaseModel):
    amount_cents: int
    journal: str


class Receipt(BaseModel):
    charge_id: str
    idempotency_key: str


class Answer(BaseModel):
    total: int
    note: str


@tool(description="Add two integers")
async def add(ctx: ToolContext, input: AddInput) -> Sum:
    return Sum(sum=input.a + input.b)


@tool(description="Charge an amount; journals each real charge")
async def charge(ctx: ToolContext, input: ChargeInput) -> Receipt:
    journal_append(input.journal, f"charge {input.amount_cents}")
    return Receipt(charge_id=f"ch_{input.amount_cents}", idempotency_key=ctx.idempotency_key)


calculator = Agent(
    id="test.calculator",
    provider="openai",
    model="gpt-4o-mini",
    system_prompt="Use the tools, then answer with JSON.",
    tools=[add, charge],
    output_schema=Answer,
    model_retry=FAST_MODEL_RETRY,
)

hasty = Agent(
    id="test.hasty",
    provider="openai",
    model="gpt-4o-mini",
    system_prompt="Answer.",
    tools=[add],
    output_schema=Answer,
    max_steps=2,
    model_retry=FAST_MODEL_RETRY,
)


@simulated_model("test.calculator")
def calculator_model(messages: list[dict], request: ModelRequest) -> SimulatedTurn:
    """Adds 2 and 3 with the tool, then reports the sum."""
    tool_results = [m for m in messages if m["role"] == "tool"]
    if not tool_results:
        return SimulatedTurn(tool_calls=[("add", {"a": 2, "b": 3})])
    return SimulatedTurn(content='{"total": 5, "note": "added"}')


class AgentInput(BaseModel):
    question: str
    agent: str = "test.calculator"
    journal: str | None = None


@workflow(id="test.agent")
async def ask_agent(ctx: WorkflowContext, payload: AgentInput) -> Answer:
    agent = {"test.calculator": calculator, "test.hasty": hasty}[payload.agent]
    result = await ctx.step.agent_invoke_and_wait("ask", agent.with_input(payload.question))
    if payload.journal:
        Path(payload.journal).touch()
    assert isinstance(result.result, Answer)
    return result.result


@workflow(id="test.budgeted", budget_usd="0.000004")
async def budgeted(ctx: WorkflowContext, payload: AgentInput) -> Answer:
    """The calculator with a budget one model call of 10 tokens in and out overspends."""
    result = await ctx.step.agent_invoke_and_wait("ask", calculator.with_input(payload.question))
    return result.result
