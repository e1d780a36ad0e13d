"""What model calls cost: a price table per model, the cost of one call, a run's budget.

Prices are US dollars per million input (prompt) and output (completion) tokens, from
`WORKFLOWS_MODEL_PRICES` (defaults for the OpenAI models this service names; override
or extend per deployment). A call's cost is computed from the usage the provider
reported and recorded with the call's step, in micro-dollars so that the engine's usage
sums (run, agent) add it up like the token counts; the price in force when the call
was made is what it cost.

```python
cost = call_cost_microusd(model="gpt-4o-mini-2024-07-18", prompt_tokens=1200, completion_tokens=80)
usd(cost)  # Decimal("0.000228")
```
"""

from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings

from workflows.engine.errors import NonRetryableError

COST_KEY = "cost_microusd"
"""The usage key a model call's cost is recorded (and summed) under."""
MICRO = Decimal("1000000")


def model_price(model: str) -> tuple[Decimal, Decimal] | None:
    """(input, output) dollars per million tokens for `model`: the longest configured
    name it starts with (`gpt-4o-mini-2024-07-18` is priced as `gpt-4o-mini`; a
    provider-qualified `simulated:gpt-4o-mini` as `simulated` when that is listed), or
    None for a model without a price (a local server's)."""
    prices: dict[str, dict[str, str]] = settings.WORKFLOWS_MODEL_PRICES
    names = [
        name
        for name in prices
        if model == name or model.startswith(f"{name}-") or model.startswith(f"{name}:")
    ]
    if not names:
        return None
    price = prices[max(names, key=len)]
    return Decimal(str(price["input"])), Decimal(str(price["output"]))


def call_cost_microusd(*, model: str, prompt_tokens: int, completion_tokens: int) -> int:
    """The cost of one call in micro-dollars (0 for an unpriced model)."""
    price = model_price(model)
    if price is None:
        return 0
    input_price, output_price = price  # dollars per million tokens = micro-dollars per token
    cost = prompt_tokens * input_price + completion_tokens * output_price
    return int(cost.to_integral_value(rounding=ROUND_HALF_UP))


def usd(microusd: int | None) -> Decimal:
    """Micro-dollars as dollars, to the micro-dollar."""
    return (Decimal(microusd or 0) / MICRO).quantize(Decimal("0.000001"))


def budget_check(*, spent_microusd: int, budget_usd: Decimal | None, run_id: object) -> None:
    """Stop before a model call once the run has spent its budget."""
    if budget_usd is not None and spent_microusd >= budget_usd * MICRO:
        raise NonRetryableError(
            f"Run {run_id} has spent ${usd(spent_microusd)} on model calls, its budget is "
            f"${budget_usd} (WORKFLOWS_RUN_BUDGET_USD): no further model call is made"
        )
