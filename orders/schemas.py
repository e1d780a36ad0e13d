"""The seed's models: the workflow's payload and result, the agent's tools and output.

Money is `Decimal` throughout (the seed's floats cannot hold cents exactly).
"""

from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from . import rules


def _refusal(exc: rules.OrderRuleError) -> PydanticCustomError:
    """The rule's message as the field's error, without pydantic's "Value error, "."""
    return PydanticCustomError("order_rule", "{reason}", {"reason": str(exc)})


def _rule(check: Callable[[Any], Any], *, before: bool = False) -> AfterValidator | BeforeValidator:
    """A domain rule as a pydantic validator: its message becomes the field's error."""

    def validate(value: Any) -> Any:
        try:
            return check(value)
        except rules.OrderRuleError as exc:
            raise _refusal(exc) from None

    return BeforeValidator(validate) if before else AfterValidator(validate)


class OrderPayload(BaseModel):
    """Input of the `order_processing` workflow, and the one place where an order's
    rules (`orders.rules`) are applied: every door builds one of these."""

    order_id: Annotated[str, _rule(rules.order_id_check)]
    customer_id: Annotated[str, _rule(rules.customer_id_check)]
    customer_email: Annotated[
        str, _rule(rules.email_check), Field(json_schema_extra={"format": "email"})
    ]
    # Before `amount`, whose range and decimals depend on it.
    currency: Annotated[str, _rule(rules.currency_check)] = "usd"
    amount: Annotated[Decimal, _rule(rules.amount_parse, before=True)]

    @field_validator("amount")
    @classmethod
    def _amount_rules(cls, amount: Decimal, info: ValidationInfo) -> Decimal:
        try:
            return rules.amount_check(amount, info.data.get("currency"))
        except rules.OrderRuleError as exc:
            raise _refusal(exc) from None


class OrderResult(BaseModel):
    """Output of the `order_processing` workflow."""

    order_id: str
    status: str
    charge_id: str | None = None
    fraud_review_required: bool = False
    fraud_approved: bool | None = None
    email_sent: bool = False
    refund_id: str | None = None
    failure_reason: str | None = None


class ActionDetails(BaseModel):
    """Details about the action taken."""

    charge_id: str | None = Field(default=None, description="Stripe charge ID if payment was made")
    amount: Decimal | None = Field(default=None, description="Amount charged or to be charged")
    email_sent_to: str | None = Field(
        default=None, description="Email address if confirmation was sent"
    )
    message_id: str | None = Field(default=None, description="Email message ID if sent")


class OrderAgentOutput(BaseModel):
    """Structured output from the order processing agent."""

    action: str = Field(description="Action taken: 'charge', 'email', or 'complete'")
    action_details: ActionDetails = Field(description="Details about the action")
    action_requested: str | None = Field(
        default=None,
        description="Next action requested: 'fraud_review' for amounts over the threshold, or None",
    )
    status_message: str = Field(description="Human-readable status message")


class ChargeStripeInput(BaseModel):
    """Input for charging a customer via Stripe."""

    customer_id: str
    amount: Decimal
    currency: str = "usd"


class ChargeStripeOutput(BaseModel):
    """Output from Stripe charge."""

    charge_id: str
    status: str
    amount: Decimal
    currency: str


class SendEmailInput(BaseModel):
    """Input for sending confirmation email."""

    email: str
    order_id: str
    amount: Decimal


class SendEmailOutput(BaseModel):
    """Output from sending email."""

    sent: bool
    message_id: str


class OrderSnapshot(BaseModel):
    """What the workflow reads back about its order after the agent acted."""

    order_id: str
    amount: Decimal
    currency: str
    status: str
    charge_id: str | None
    # None in snapshots recorded before holds existed: those orders were captured at once.
    payment_status: str | None = None
    failure_reason: str | None
    email_sent: bool
