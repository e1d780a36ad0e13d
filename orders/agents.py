"""The order agent, its two tools, and its simulated stand-in model.

The tools act on the run's own order, never on the model's numbers: arguments that do
not match the order go back to the model as a refusal, and policy (the fraud threshold,
no confirmation before approval) is enforced here as well as in the prompt.
"""

import json
import re
from decimal import Decimal
from typing import Any

from workflows import RetryPolicy, run_sync
from workflows.agents import Agent, ModelRequest, SimulatedTurn, ToolContext, simulated_model, tool

from .mail import SMTP_DEPENDENCY
from .payments import AUTHORIZED, STRIPE_DEPENDENCY
from .policy import fraud_review_required, fraud_review_rule_text
from .schemas import (
    ChargeStripeInput,
    ChargeStripeOutput,
    OrderAgentOutput,
    SendEmailInput,
    SendEmailOutput,
)
from .services.lifecycle import order_check_arguments, order_confirm, order_for_run
from .services.payments import order_charge

# A tool call retries in the worker (the model waits for its answer) and does not call a
# dependency whose circuit is open; the workflow's own charge and confirm steps wait out
# longer outages.
CHARGE_TOOL_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.5, dependency=STRIPE_DEPENDENCY)
EMAIL_TOOL_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.5, dependency=SMTP_DEPENDENCY)


@tool(description="Charge a customer using Stripe payment processing", retry=CHARGE_TOOL_RETRY)
async def charge_stripe(ctx: ToolContext, input: ChargeStripeInput) -> ChargeStripeOutput:
    def charge() -> ChargeStripeOutput:
        order = order_for_run(ctx.run_id)
        order_check_arguments(
            order=order, customer_id=input.customer_id, amount=input.amount, currency=input.currency
        )
        result = order_charge(order=order)  # the order's key, not this tool call's
        return ChargeStripeOutput(
            charge_id=result.charge_id,
            status=result.status,
            amount=result.amount,
            currency=result.currency,
        )

    return await run_sync(charge)()


@tool(description="Send order confirmation email to customer", retry=EMAIL_TOOL_RETRY)
async def send_confirmation_email(ctx: ToolContext, input: SendEmailInput) -> SendEmailOutput:
    def send() -> SendEmailOutput:
        order = order_for_run(ctx.run_id)
        order_check_arguments(
            order=order, order_id=input.order_id, email=input.email, amount=input.amount
        )
        record = order_confirm(order=order)
        return SendEmailOutput(sent=True, message_id=record.message_id)

    return await run_sync(send)()


# No threshold here: it depends on the order's currency and on settings, so each
# order's prompt states its own (`start_prompt`, built when the agent is invoked).
SYSTEM_PROMPT = """You are an order processing assistant that handles payments and confirmations.

RULES:
1. When asked to process a payment, use the charge_stripe tool first
2. After charging (a charge_stripe status of 'requires_capture' is an authorization hold, \
captured after a fraud review: say "hold", not "charged", in your status message):
   - If the amount is above the order's fraud review threshold (stated with the order): Set \
action_requested='fraud_review' (human review needed) and DO NOT SEND confirmation email.
   - Otherwise: Immediately send confirmation email using send_confirmation_email tool
3. In the case of fraud review:
   - When you receive fraud review approval, send the confirmation email
   - When you receive fraud review rejection, just report the rejection (no email)
4. If a tool answers with an error, do not retry with other values: report the error.

Always respond with structured output indicating:
- action: last action that you did ('charge' or 'email')
- action_details: relevant IDs and amounts for the action
- action_requested: 'fraud_review' if needed, otherwise null
- status_message: human-readable summary"""

order_agent = Agent(
    id="order_agent",
    provider="openai",
    model="gpt-4o-mini",
    system_prompt=SYSTEM_PROMPT,
    tools=[charge_stripe, send_confirmation_email],
    output_schema=OrderAgentOutput,
    description="Charges the customer, then confirms by email or asks for fraud review.",
)


def start_prompt(*, order_id: str, customer_id: str, amount: str, currency: str, email: str) -> str:
    """The order's first message to the agent, with the fraud rule for its currency as
    the settings say now (the workflow builds it when it invokes the agent)."""
    return (
        f"Process payment for order {order_id}. "
        f"Charge customer {customer_id} for {amount} {currency.upper()}. "
        f"Customer email is {email}. {fraud_review_rule_text(currency=currency)}"
    )


def approved_prompt(
    *, order_id: str, charge_id: str, amount: str, currency: str, email: str
) -> str:
    return (
        f"Fraud review APPROVED for order {order_id}. "
        f"Charge ID: {charge_id}, Amount: {amount} {currency.upper()}. "
        f"Now send confirmation email to {email}."
    )


# --- the simulated order agent --------------------------------------------------------

_START = re.compile(
    r"Process payment for order (?P<order_id>\S+)\. Charge customer (?P<customer_id>\S+) "
    r"for (?P<amount>[\d.]+) (?P<currency>[A-Z]{3})\. Customer email is (?P<email>\S+)\.(?: .*)?$"
)
_APPROVED = re.compile(
    r"Fraud review APPROVED for order (?P<order_id>\S+)\. Charge ID: (?P<charge_id>\S+), "
    r"Amount: (?P<amount>[\d.]+) (?P<currency>[A-Z]{3})\. "
    r"Now send confirmation email to (?P<email>\S+)\.$"
)


def _tool_results(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The latest result of each tool, by tool name."""
    names = {
        call["id"]: call["function"]["name"]
        for m in messages
        if m["role"] == "assistant"
        for call in m.get("tool_calls") or []
    }
    return {
        names.get(m["tool_call_id"], "?"): json.loads(m["content"])
        for m in messages
        if m["role"] == "tool"
    }


def _answer(
    action: str, status_message: str, requested: str | None = None, **details: Any
) -> SimulatedTurn:
    return SimulatedTurn(
        content=json.dumps(
            {
                "action": action,
                "action_details": details,
                "action_requested": requested,
                "status_message": status_message,
            }
        )
    )


def _payment_verb(charge: dict[str, Any]) -> str:
    return "Placed a hold of" if charge.get("status") == AUTHORIZED else "Charged"


def _confirmation_call(order: dict[str, str]) -> SimulatedTurn:
    return SimulatedTurn(
        tool_calls=[
            (
                "send_confirmation_email",
                {"email": order["email"], "order_id": order["order_id"], "amount": order["amount"]},
            )
        ]
    )


@simulated_model("order_agent")
def simulated_order_agent(messages: list[dict[str, Any]], request: ModelRequest) -> SimulatedTurn:
    """Follows the system prompt's RULES on the conversation it is given."""
    prompt = next(m["content"] for m in messages if m["role"] == "user")
    results = _tool_results(messages)
    approved = _APPROVED.match(prompt)
    if approved:
        order = approved.groupdict()
        email = results.get("send_confirmation_email")
        if email is None:
            return _confirmation_call(order)
        if "error" in email:
            return _answer("email", f"Could not send the confirmation: {email['error']}")
        return _answer(
            "email",
            f"Fraud review approved; confirmation sent to {order['email']}.",
            email_sent_to=order["email"],
            message_id=email["message_id"],
        )

    started = _START.match(prompt)
    if not started:
        return _answer("complete", "I can only process payments for orders.")
    order = started.groupdict()
    charge = results.get("charge_stripe")
    if charge is None:
        return SimulatedTurn(
            tool_calls=[
                (
                    "charge_stripe",
                    {
                        "customer_id": order["customer_id"],
                        "amount": order["amount"],
                        "currency": order["currency"].lower(),
                    },
                )
            ]
        )
    if "error" in charge:
        return _answer("charge", f"Payment failed: {charge['error']}")
    # An order sent to review is only held (authorized), not charged: say which.
    took = f"{_payment_verb(charge)} {order['amount']} {order['currency']}"
    if fraud_review_required(amount=Decimal(order["amount"]), currency=order["currency"]):
        return _answer(
            "charge",
            f"{took}; amount is over the fraud threshold, so a human must review the "
            "order before confirmation.",
            requested="fraud_review",
            charge_id=charge["charge_id"],
            amount=order["amount"],
        )
    email = results.get("send_confirmation_email")
    if email is None:
        return _confirmation_call(order)
    if "error" in email:
        return _answer(
            "email",
            f"{took}, but the confirmation failed: {email['error']}",
            charge_id=charge["charge_id"],
        )
    return _answer(
        "email",
        f"{took} and sent the confirmation.",
        charge_id=charge["charge_id"],
        amount=order["amount"],
        email_sent_to=order["email"],
        message_id=email["message_id"],
    )
