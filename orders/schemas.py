"""The seed's models: the workflow's payload and result, the agent's tools and output.

Money is `Decimal` throughout (the seed's floats cannot hold cents exactly).
"""

from decimal import Decimal

from pydantic import BaseModel, EmailStr, Field


class OrderPayload(BaseModel):
    """Input of the `order_processing` workflow."""

    order_id: str
    customer_id: str
    customer_email: EmailStr
    amount: Decimal = Field(gt=0, decimal_places=2)
    currency: str = "usd"


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
    failure_reason: str | None
    email_sent: bool
