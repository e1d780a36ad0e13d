"""Where the order's money moves: the payment-status transition table and the only
UPDATEs of it, the charge, capture and release (hold cancelled or capture refunded)
with their idempotency keys, and what Stripe's webhooks record. The gateway itself is
`orders.payments`."""

import logging
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from workflows.engine.compiled_queries import CompiledUpdate

from ..client_webhooks.models import PAYMENT_STATUS_EVENTS
from ..client_webhooks.services import order_event_emit
from ..errors import OrderActionRefusedError
from ..models import Order, OrderStatus, PaymentStatus
from ..payments import (
    AUTHORIZED,
    CAPTURED,
    CaptureFailedError,
    Charge,
    PaymentDeclinedError,
    payment_gateway,
    payment_key,
)
from ..policy import payment_capture_now
from .lifecycle import order_for_run, order_reload

logger = logging.getLogger(__name__)


# --- payment status: the only place it moves -------------------------------------------

_P = PaymentStatus
# Where an order's money may go from where it is. Staying put is always allowed (a retry
# or a redelivered event changes nothing); anything else is refused, so that an event
# arriving out of order (a late `payment_intent.succeeded` after a refund) cannot move it
# backwards.
PAYMENT_TRANSITIONS: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    _P.NONE: frozenset({_P.AUTHORIZED, _P.CAPTURED, _P.FAILED}),
    _P.AUTHORIZED: frozenset({_P.CAPTURED, _P.CANCELED, _P.FAILED}),
    _P.CAPTURED: frozenset({_P.REFUNDED, _P.PARTIALLY_REFUNDED, _P.DISPUTED}),
    _P.PARTIALLY_REFUNDED: frozenset({_P.REFUNDED, _P.DISPUTED}),
    # A dispute is a parenthesis: it closes back where the money was when it opened
    # (`Order.payment_status_before_dispute`; won) or on one of that status's own moves
    # (lost: the funds are withdrawn). So refunded → disputed → captured is refused.
    _P.DISPUTED: frozenset({_P.CAPTURED, _P.PARTIALLY_REFUNDED, _P.REFUNDED}),
    _P.REFUNDED: frozenset({_P.DISPUTED}),
    # A failed capture is an authorization Stripe has cancelled, or will.
    _P.FAILED: frozenset({_P.CANCELED}),
    _P.CANCELED: frozenset(),
}


def _dispute_exits(to: PaymentStatus) -> list[PaymentStatus]:
    """The statuses before a dispute from which closing it may move the money to `to`:
    back where it was, or on along the table from there."""
    if to not in PAYMENT_TRANSITIONS[_P.DISPUTED]:
        return []
    return [
        before
        for before, targets in PAYMENT_TRANSITIONS.items()
        if before != _P.DISPUTED and _P.DISPUTED in targets and (to == before or to in targets)
    ]


def _payment_move_allowed(to: PaymentStatus) -> Q:
    """Where the transition table lets an order's payment move to `to` from (or stay)."""
    sources = [src for src, targets in PAYMENT_TRANSITIONS.items() if to in targets]
    allowed = Q(payment_status=to) | Q(payment_status__in=[s for s in sources if s != _P.DISPUTED])
    if _P.DISPUTED in sources:
        allowed |= Q(
            payment_status=_P.DISPUTED, payment_status_before_dispute__in=_dispute_exits(to)
        )
    return allowed


# Each move's conditional UPDATE, its SQL compiled once (a charge writes two of them).
_PAYMENT_MOVES = {
    to: CompiledUpdate(Order, ["pk"], where=_payment_move_allowed(to)) for to in PaymentStatus
}


def _payment_status_move(order: Order, to: PaymentStatus, **fields: Any) -> bool:
    """Move the order's payment to `to` (and write `fields`) if the transition table
    allows it from where it is in the database now: one conditional UPDATE, so that a
    step and a webhook racing cannot skip a state. Returns whether the row was written."""
    if to == _P.DISPUTED:  # remembered on the way in, kept while it stays disputed
        fields["payment_status_before_dispute"] = Case(
            When(payment_status=_P.DISPUTED, then=F("payment_status_before_dispute")),
            default=F("payment_status"),
        )
    moved = _PAYMENT_MOVES[to].update(
        order.pk, payment_status=to, updated_at=timezone.now(), **fields
    )
    if not moved:
        current = Order.objects.filter(pk=order.pk).values_list("payment_status", flat=True)
        logger.warning(
            "order %s: payment stays %s, not moved to %s",
            order.order_id,
            current.first(),
            to,
        )
    return bool(moved)


def order_payment_status_set(
    *,
    order: Order,
    status: PaymentStatus,
    reason: str = "",
    refunded_amount: Decimal | None = None,
) -> bool:
    """Record what happened to an order's payment outside this service: the door for
    Stripe's webhooks (`charge.refunded` → REFUNDED or PARTIALLY_REFUNDED,
    `charge.dispute.created` → DISPUTED, `charge.dispute.closed` → back to where it was
    before the dispute when won, on to REFUNDED or PARTIALLY_REFUNDED when lost,
    `payment_intent.canceled` → CANCELED, `payment_intent.payment_failed` → FAILED; see
    `orders.stripe_webhooks`). `refunded_amount`: how much has been refunded in all
    (major units), recorded with the move; it only ever grows.

    Idempotent (setting the current status again changes nothing) and ordered: a move
    `PAYMENT_TRANSITIONS` does not allow is logged and ignored, and False is returned.
    It moves the money's status only: the order's own status stays the workflow's (an
    authorization that expired during its review fails the capture on approval, or is
    simply released on rejection), except that a hold released during the review is
    noted in the order's failure reason. `reason` (the event id and type, say) goes to
    the log.
    """
    status = PaymentStatus(status)
    before = Order.objects.filter(pk=order.pk).values_list("payment_status", flat=True).first()
    fields: dict[str, object] = {}
    if refunded_amount is not None:
        # A late event about an earlier, smaller refund never shrinks what was refunded.
        fields["refunded_amount"] = Greatest(
            Coalesce(F("refunded_amount"), Value(Decimal(0))), Value(refunded_amount)
        )
        fields["refunded_at"] = Coalesce(F("refunded_at"), Value(timezone.now()))
    moved = _payment_status_move(order, status, **fields)
    order_event_emit(order=order, type=PAYMENT_STATUS_EVENTS.get(status))
    if moved and before != status and status == PaymentStatus.CANCELED:
        _order_hold_released_note(order)
    logger.info(
        "order %s: payment %s from outside%s%s",
        order.order_id,
        status if moved else f"not moved to {status}",
        ": " if reason else "",
        reason,
    )
    return moved


def _order_hold_released_note(order: Order) -> None:
    """Stripe released the hold (it expired, or someone cancelled it in the dashboard)
    while the order waits for its reviewer: say so on the order, whose status stays the
    workflow's, because approving it can no longer capture anything."""
    Order.objects.filter(pk=order.pk, status=OrderStatus.AWAITING_REVIEW).update(
        failure_reason="payment authorization canceled at Stripe during the review: "
        "approving cannot capture it",
        updated_at=timezone.now(),
    )


def order_radar_review_set(*, order: Order, review: str, closed: bool) -> bool:
    """Record Stripe Radar's review of the order's payment (`review.opened`/`closed`
    webhooks; shown in the admin). It moves no money: a review closed by a refund comes
    with its own `charge.refunded`. A late `review.opened` does not reopen a closed one.
    Returns whether the order was written."""
    orders = Order.objects.filter(pk=order.pk)
    if not closed:
        orders = orders.exclude(radar_review__startswith="closed")
    return bool(orders.update(radar_review=review[:64], updated_at=timezone.now()))


def _order_payment_metadata(order: Order) -> dict[str, str]:
    """What Stripe keeps on the order's PaymentIntent and refund: how a later attempt
    recognises what an earlier one created."""
    return {"order_id": order.order_id, "order_pk": str(order.pk)}


# Marks the first attempt of every charge, on disk before the gateway is called (steps run
# outside transactions), so a crash or a power cut after Stripe answered still leaves it
# for the next attempt (workflows.engine.durability).
_charge_attempt_mark = CompiledUpdate(
    Order, ["pk"], where=Q(charge_attempted_at__isnull=True), durable=True
)


def order_charge(*, order: Order) -> Charge:
    """Charge the order's own amount, once. A second call returns the first charge.

    `order` as just read (`order_for_run`): its doors read it to check the tool's
    arguments, so it is not read again here. A stale one charges no one twice either:
    an order already attempted has the gateway find its PaymentIntent.

    An order the fraud policy sends to review is only authorized (a hold, captured on
    approval by `order_capture`); the others are captured at once. Decided here, by
    `payment_capture_now`, whoever asked for the charge and however.

    Whoever calls (the agent's tool, the workflow's fallback, a retry or a replay), it
    is one operation: the key comes from the order, and the gateway recovers the
    PaymentIntent that an attempt with a lost answer may have created. Which attempt
    came first is written on the order (`charge_attempted_at`) before it leaves: every
    later one, from any door, after any crash, has the gateway look first.

    A decline marks the order failed with the reason and raises `PaymentDeclinedError`;
    transient gateway errors propagate for the caller's retry policy.
    """
    if order.charge_id:
        return Charge(
            charge_id=order.charge_id,
            status=AUTHORIZED if order.payment_status == PaymentStatus.AUTHORIZED else CAPTURED,
            amount=order.charged_amount or order.amount,
            currency=order.currency,
        )
    if order.status == OrderStatus.FAILED:
        raise PaymentDeclinedError(order.failure_reason or "payment was declined")
    if order.status == OrderStatus.CANCELLED:
        raise OrderActionRefusedError("Refused: the order is cancelled.")
    first_attempt = _charge_attempt_mark.update(order.pk, charge_attempted_at=timezone.now())
    try:
        charge = payment_gateway().charge(
            customer_id=order.customer_id,
            amount=order.amount,
            currency=order.currency,
            idempotency_key=payment_key(operation="charge", order_pk=order.pk),
            metadata=_order_payment_metadata(order),
            created_since=order.created_at,
            capture=payment_capture_now(amount=order.amount, currency=order.currency),
            outcome_unknown=not first_attempt,
        )
    except PaymentDeclinedError as exc:
        if _payment_status_move(order, PaymentStatus.FAILED):
            Order.objects.filter(pk=order.pk, charge_id="").update(
                status=OrderStatus.FAILED, failure_reason=f"{exc.code}: {exc.reason}"[:255]
            )
        raise
    risk: dict[str, object] = {}
    if charge.risk_level or charge.risk_score is not None:  # for the reviewers (orders.risk)
        risk = {"stripe_risk_level": charge.risk_level[:20], "stripe_risk_score": charge.risk_score}
    written = order.payment_status == PaymentStatus.NONE and _payment_status_move(
        order,
        PaymentStatus.CAPTURED if charge.captured else PaymentStatus.AUTHORIZED,
        charge_id=charge.charge_id,
        charged_amount=charge.amount,
        charged_at=timezone.now(),
        **risk,
    )
    if risk and not written:
        Order.objects.filter(pk=order.pk).update(**risk)
    order_reload(order)
    if order.status == OrderStatus.CANCELLED:  # cancelled while the charge was in flight
        order_payment_release(order=order)
    return charge


def order_capture(*, run_id: UUID) -> None:
    """Capture the order's authorization (its review was approved), once, under the
    order's capture key. Nothing to do when it is captured already, as are the orders
    charged before holds existed.

    A failed capture (the hold expired or was released) fails the order with the reason
    and raises `CaptureFailedError`: no money was taken.
    """
    order = order_for_run(run_id)
    if order.payment_status == PaymentStatus.CANCELED:
        # Stripe released the hold while the review waited (its webhook said so): the
        # approval has nothing left to capture.
        Order.objects.filter(pk=order.pk).update(
            status=OrderStatus.FAILED,
            failure_reason="capture_failed: the authorization was canceled (expired or "
            "released) before the review was approved",
            updated_at=timezone.now(),
        )
        return
    if order.payment_status != PaymentStatus.AUTHORIZED:
        return
    try:
        payment_gateway().capture(
            charge_id=order.charge_id,
            amount=order.charged_amount or order.amount,
            currency=order.currency,
            idempotency_key=payment_key(operation="capture", order_pk=order.pk),
            authorized_at=order.charged_at,
        )
    except CaptureFailedError as exc:
        if _payment_status_move(order, PaymentStatus.FAILED):
            Order.objects.filter(pk=order.pk).update(
                status=OrderStatus.FAILED, failure_reason=f"capture_failed: {exc.reason}"[:255]
            )
        raise
    _payment_status_move(order, PaymentStatus.CAPTURED)


def order_payment_release(*, order: Order) -> None:
    """Give the customer's money back the cheapest way, once: cancel a hold (no fee,
    nothing on the statement), refund a capture (orders charged before holds existed,
    or an order cancelled after its capture). Nothing to do when no money moved."""
    order_reload(order)
    if order.payment_status == PaymentStatus.AUTHORIZED:
        payment_gateway().cancel(
            charge_id=order.charge_id,
            idempotency_key=payment_key(operation="cancel", order_pk=order.pk),
        )
        _payment_status_move(order, PaymentStatus.CANCELED)
    elif order.payment_status == PaymentStatus.CAPTURED:
        _order_refund(order)


def _order_refund(order: Order) -> str:
    """Refund the order's capture in full, once; returns the refund id (the same on a
    retry). The key comes from the order, and the gateway recovers a refund whose
    answer was lost."""
    if order.refund_id:
        return order.refund_id
    refund = payment_gateway().refund(
        charge_id=order.charge_id,
        amount=order.charged_amount or order.amount,
        currency=order.currency,
        idempotency_key=payment_key(operation="refund", order_pk=order.pk),
        metadata=_order_payment_metadata(order),
    )
    _payment_status_move(
        order,
        PaymentStatus.REFUNDED,
        refund_id=refund.refund_id,
        refunded_at=timezone.now(),
        refunded_amount=refund.amount,
    )
    return refund.refund_id
