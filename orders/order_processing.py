"""The `order_processing` workflow: the Polos seed's flow, made safe for real money.

    ≤ threshold:  agent charges (captured) → agent emails → completed
    > threshold:  agent charges (authorized only: a hold) → suspend at `fraud_review`
                    approved  → capture → agent emails (`send_confirmation`) → completed
                                capture failed (the hold expired) → failed
                    rejected  → cancel the hold → rejected
                    timed out → cancel the hold → rejected (review_timeout)
    declined:     failed, no email, no review

The model drives the tools, but the workflow checks what actually happened (a step
reads the order back) and enforces policy itself: it charges if the agent did not,
requires the review above the threshold whatever the agent asked for, and sends the
confirmation if the agent did not. An agent that fails (gives up after refused calls,
runs out of steps, its model is down) fails no order: its failure is recorded as a step
and the same code-side policy carries the order on.

Runs suspended before holds existed have a captured charge: approval's capture has
nothing to do, and rejection refunds it under the step key `refund` they always had.
"""

from decimal import Decimal
from uuid import UUID

from django.conf import settings
from pydantic import BaseModel

from workflows import RetryPolicy, WorkflowContext, workflow
from workflows.engine.errors import StepFailedError

from .agents import approved_prompt, order_agent, start_prompt
from .mail import SMTP_DEPENDENCY
from .models import FRAUD_REVIEW_KEY, ORDER_WORKFLOW_ID, OrderStatus, PaymentStatus
from .money import amount_plain
from .payments import (
    STRIPE_DEPENDENCY,
    CaptureFailedError,
    PaymentDeclinedError,
    TransientPaymentError,
)
from .policy import fraud_review_required, fraud_review_threshold
from .schemas import ActionDetails, OrderAgentOutput, OrderPayload, OrderResult, OrderSnapshot
from .selectors import order_email_sent
from .services.intake import order_register_run
from .services.lifecycle import order_confirm, order_finish, order_for_run, order_snapshot
from .services.payments import order_capture, order_charge, order_payment_release
from .services.reviews import order_review_open

# Gateway outages are waited out (a durable wait after the first few attempts, behind
# Stripe's circuit) for the retry horizon; past it the run fails and `retry_run` (or
# `retry_runs`) continues it from here.
PAYMENT_RETRY = RetryPolicy(
    max_attempts=5,
    initial_interval=1.0,
    max_interval=30.0,
    retry_on=(TransientPaymentError,),
    dependency=STRIPE_DEPENDENCY,
)
# The same for the mail server; other errors of the confirmation get 3 attempts.
CONFIRM_RETRY = RetryPolicy(
    max_attempts=3, initial_interval=1.0, max_interval=30.0, dependency=SMTP_DEPENDENCY
)

# The step keys of the order agent's two invocations: its model and tool calls are
# recorded under them (see `workflows.agents.transcript`).
START_ORDER_AGENT_KEY = "start_order"
SEND_CONFIRMATION_AGENT_KEY = "send_confirmation"


class FraudPolicy(BaseModel):
    """The workflow's own decision, recorded in the trace beside the agent's request."""

    review_required: bool
    threshold: Decimal | None  # None: the currency has none, so every order is reviewed
    currency: str = "usd"
    agent_requested_review: bool
    overrides_agent: bool


def _charge_directly(run_id: UUID) -> OrderSnapshot:
    order = order_for_run(run_id)
    try:
        order_charge(order=order)
    except PaymentDeclinedError:
        pass  # recorded on the order by order_charge
    return order_snapshot(run_id=run_id)


def _capture(run_id: UUID) -> OrderSnapshot:
    try:
        order_capture(run_id=run_id)
    except CaptureFailedError:
        pass  # recorded on the order (failed, with the reason) by order_capture
    return order_snapshot(run_id=run_id)


def _release(run_id: UUID) -> OrderSnapshot:
    order_payment_release(order=order_for_run(run_id))
    return order_snapshot(run_id=run_id)


def _agent_failed(key: str, error: str) -> OrderAgentOutput:
    """The failed agent's stand-in answer: the workflow's own checks decide from here."""
    return OrderAgentOutput(
        action="none",
        action_details=ActionDetails(),
        action_requested=None,
        status_message=f"The agent failed at {key!r} ({error}); the workflow's policy went on.",
    )


def _confirm(run_id: UUID) -> OrderSnapshot:
    order_confirm(order=order_for_run(run_id))
    return order_snapshot(run_id=run_id)


def _fraud_policy(amount: Decimal, currency: str, agent_output: OrderAgentOutput) -> FraudPolicy:
    required = fraud_review_required(amount=amount, currency=currency)
    requested = agent_output.action_requested == "fraud_review"
    return FraudPolicy(
        review_required=required,
        threshold=fraud_review_threshold(currency=currency),
        currency=currency,
        agent_requested_review=requested,
        overrides_agent=required != requested,
    )


def _finish(
    run_id: UUID,
    status: OrderStatus,
    reason: str = "",
    fraud_approved: bool | None = None,
) -> OrderResult:
    order = order_finish(run_id=run_id, status=status, reason=reason, fraud_approved=fraud_approved)
    if order is None:
        order = order_for_run(run_id)  # raises Order.DoesNotExist, as it always did
    return OrderResult(
        order_id=order.order_id,
        status=order.status,
        charge_id=order.charge_id or None,
        fraud_review_required=order.fraud_review_required,
        fraud_approved=order.fraud_approved,
        email_sent=order_email_sent(order),
        refund_id=order.refund_id or None,
        failure_reason=order.failure_reason or None,
    )


@workflow(id=ORDER_WORKFLOW_ID, description="Charge, confirm, and hold large orders for review.")
async def order_processing(ctx: WorkflowContext, payload: OrderPayload) -> OrderResult:
    amount = amount_plain(payload.amount, payload.currency)
    # Steps whose arguments are already in the run (its input, the agent's step) record
    # only what names them: the trace keeps each thing once.
    await ctx.step.execute_step(
        "register_order",
        order_register_run,
        payload=payload,
        run_id=ctx.run_id,
        input={"order_id": payload.order_id},
    )
    try:
        result = await ctx.step.agent_invoke_and_wait(
            START_ORDER_AGENT_KEY,
            order_agent.with_input(
                start_prompt(
                    order_id=payload.order_id,
                    customer_id=payload.customer_id,
                    amount=amount,
                    currency=payload.currency,
                    email=payload.customer_email,
                )
            ),
        )
        output: OrderAgentOutput = result.result
    except StepFailedError as exc:
        output = await ctx.step.run(
            "start_order_failed", _agent_failed, START_ORDER_AGENT_KEY, str(exc)
        )
    order = await ctx.step.run("check_order", order_snapshot, run_id=ctx.run_id)

    if order.charge_id is None and order.status != OrderStatus.FAILED:
        # The agent did not charge (it skipped the tool, or the gateway was down).
        order = await ctx.step.run(
            "charge",
            _charge_directly,
            ctx.run_id,
            retry=PAYMENT_RETRY,
        )
    if order.charge_id is None:
        return await ctx.step.run(
            "finish", _finish, ctx.run_id, OrderStatus.FAILED, order.failure_reason or ""
        )

    policy = await ctx.step.execute_step(
        "fraud_policy",
        _fraud_policy,
        payload.amount,
        payload.currency,
        output,
        input={
            "amount": amount,
            "currency": payload.currency,
            "action_requested": output.action_requested,
        },
    )
    if not policy.review_required:
        if not order.email_sent:
            await ctx.step.run("confirm", _confirm, ctx.run_id, retry=CONFIRM_RETRY)
        return await ctx.step.run("finish", _finish, ctx.run_id, OrderStatus.COMPLETED)

    await ctx.step.run("open_review", order_review_open, run_id=ctx.run_id)
    resume_data = await ctx.step.suspend(
        FRAUD_REVIEW_KEY,
        data={
            "order_id": payload.order_id,
            "customer_id": payload.customer_id,
            "amount": amount,
            "currency": payload.currency,
            "charge_id": order.charge_id,
            "message": output.status_message,
        },
        timeout=settings.FRAUD_REVIEW_TIMEOUT,
    )
    if not resume_data.get("data", {}).get("approved", False):
        # A hold is cancelled; a capture (runs suspended before holds) is refunded. The
        # key comes from the recorded snapshot, so it is the same on every replay.
        held = order.payment_status == PaymentStatus.AUTHORIZED
        release_key = "cancel" if held else "refund"
        await ctx.step.run(release_key, _release, ctx.run_id, retry=PAYMENT_RETRY)
        reason = "review_timeout" if resume_data.get("timed_out") else "review_rejected"
        return await ctx.step.run(
            "finish", _finish, ctx.run_id, OrderStatus.REJECTED, reason, False
        )

    order = await ctx.step.run("capture", _capture, ctx.run_id, retry=PAYMENT_RETRY)
    if order.payment_status in (PaymentStatus.FAILED, PaymentStatus.CANCELED):
        return await ctx.step.run(
            "finish", _finish, ctx.run_id, OrderStatus.FAILED, order.failure_reason or "", True
        )
    try:
        await ctx.step.agent_invoke_and_wait(
            SEND_CONFIRMATION_AGENT_KEY,
            order_agent.with_input(
                approved_prompt(
                    order_id=payload.order_id,
                    charge_id=order.charge_id or "",
                    amount=amount,
                    currency=payload.currency,
                    email=payload.customer_email,
                )
            ),
        )
    except StepFailedError as exc:
        await ctx.step.run(
            "send_confirmation_failed", _agent_failed, SEND_CONFIRMATION_AGENT_KEY, str(exc)
        )
    order = await ctx.step.run("check_confirmation", order_snapshot, run_id=ctx.run_id)
    if not order.email_sent:
        await ctx.step.run("confirm", _confirm, ctx.run_id, retry=CONFIRM_RETRY)
    return await ctx.step.run("finish", _finish, ctx.run_id, OrderStatus.COMPLETED, "", True)
