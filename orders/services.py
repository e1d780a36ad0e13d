"""Writes of the orders domain. The workflow, the agent's tools, the API, admin and the
commands all go through these functions."""

import hashlib
import json
import logging
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypedDict, cast
from uuid import UUID

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Case, Exists, F, OuterRef, Q, Value, When
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone
from django_stubs_ext import WithAnnotations

from workflows import (
    NonRetryableError,
    RunStateError,
    WaitAlreadyDecidedError,
    WaitExpiredError,
    WaitNotFoundError,
    run_cancel,
    run_resume,
    run_retry,
    workflow_start,
)
from workflows.models import RunStatus, WorkflowRun

from .client_webhooks.models import ORDER_STATUS_EVENTS, PAYMENT_STATUS_EVENTS, WebhookEvent
from .client_webhooks.services import order_event_emit
from .models import (
    FRAUD_REVIEW_KEY,
    ORDER_WORKFLOW_ID,
    EmailRecord,
    EmailStatus,
    FraudReview,
    Order,
    OrderStatus,
    PaymentStatus,
    ReviewState,
)
from .notifications import (
    CONFIRMATION,
    REVIEW_ALERT,
    REVIEW_REMINDER,
    order_confirmation_send,
    review_email_send,
)
from .payments import (
    AUTHORIZED,
    CAPTURED,
    CaptureFailedError,
    Charge,
    PaymentDeclinedError,
    TransientPaymentError,
    payment_gateway,
    payment_key,
)
from .policy import fraud_review_required, payment_capture_now
from .rules import OrderRuleError, idempotency_key_check, note_check
from .schemas import OrderPayload, OrderSnapshot
from .selectors import order_fraud_review

logger = logging.getLogger(__name__)

DECIDE_PERMISSION = "orders.decide_fraud_review"
CANCEL_PERMISSION = "orders.cancel_order"


class OrderConflictError(Exception):
    """The order id (or idempotency key) exists with a different request body."""


class OrderActionRefusedError(NonRetryableError):
    """A charge or confirmation of the order was refused: the tool call's arguments
    differ from the run's own order (`order_check_arguments`), or the order's state or
    the policy forbids it now (cancelled, not charged, review not approved). Not
    retried: the agent gets the message as the tool's error, a workflow step fails."""


class NoConfirmationInDoubtError(Exception):
    """The order has no confirmation email in doubt (claimed, outcome unknown) to
    settle."""


class ReviewError(Exception):
    """The review cannot be decided now: nothing to decide, already decided, expired."""


class OrderCancelError(RunStateError):
    """The order cannot be cancelled (it is finished). A `RunStateError`, so that
    cancelling its run from the console or `cancel_run` reports it like any refusal."""


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


def _payment_status_move(order: Order, to: PaymentStatus, **fields: object) -> bool:
    """Move the order's payment to `to` (and write `fields`) if the transition table
    allows it from where it is in the database now: one conditional UPDATE, so that a
    step and a webhook racing cannot skip a state. Returns whether the row was written."""
    sources = [src for src, targets in PAYMENT_TRANSITIONS.items() if to in targets]
    allowed = Q(payment_status=to) | Q(payment_status__in=[s for s in sources if s != _P.DISPUTED])
    if _P.DISPUTED in sources:
        allowed |= Q(
            payment_status=_P.DISPUTED, payment_status_before_dispute__in=_dispute_exits(to)
        )
    if to == _P.DISPUTED:  # remembered on the way in, kept while it stays disputed
        fields["payment_status_before_dispute"] = Case(
            When(payment_status=_P.DISPUTED, then=F("payment_status_before_dispute")),
            default=F("payment_status"),
        )
    moved = Order.objects.filter(allowed, pk=order.pk).update(
        payment_status=to, updated_at=timezone.now(), **fields
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


def _fingerprint(payload: OrderPayload) -> str:
    canonical = json.dumps(payload.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def order_create(
    *,
    payload: OrderPayload,
    client: User | None = None,
    idempotency_key: str | None = None,
) -> tuple[Order, bool]:
    """Create the order for `client` (None: the console's or a command's) and start its
    workflow in one transaction, or return the existing order for a repeat of the same
    request. Returns (order, created).

    Order ids and idempotency keys are the client's own: only its orders are repeats or
    conflicts. Raises `OrderConflictError` when the client used the order id or
    idempotency key with a different body, `OrderRuleError` for a malformed key.
    """
    # Validated again: a payload built with `model_construct` or `model_copy(update=...)`
    # skipped the order rules, and no door may. Raises pydantic's ValidationError.
    payload = OrderPayload.model_validate(payload.model_dump())
    if idempotency_key is not None:
        idempotency_key_check(idempotency_key)
    fingerprint = _fingerprint(payload)
    existing = _order_find(
        client=client, order_id=payload.order_id, idempotency_key=idempotency_key
    )
    if existing is None:
        try:
            with transaction.atomic():
                order = Order.objects.create(
                    client=client,
                    order_id=payload.order_id,
                    customer_id=payload.customer_id,
                    customer_email=payload.customer_email,
                    amount=payload.amount,
                    currency=payload.currency,
                    # Known at intake, so the 201 says it (the review opens later).
                    fraud_review_required=fraud_review_required(
                        amount=payload.amount, currency=payload.currency
                    ),
                    request_fingerprint=fingerprint,
                    idempotency_key=idempotency_key,
                )
                order.run = workflow_start(ORDER_WORKFLOW_ID, payload)
                order.save(update_fields=["run"])
                order_event_emit(order=order, type=WebhookEvent.CREATED)
            return order, True
        except IntegrityError:  # a concurrent request created it first
            existing = _order_find(
                client=client, order_id=payload.order_id, idempotency_key=idempotency_key
            )
            if existing is None:
                raise
    if existing.request_fingerprint != fingerprint:
        raise OrderConflictError(
            f"Order {existing.order_id} already exists with a different request body"
        )
    return existing, False


def order_register_run(*, payload: OrderPayload, run_id: UUID) -> None:
    """Make sure the run's order exists: a run started outside `order_create` (the
    start-a-run page, another client of the engine) creates its order here."""
    payload = payload.model_copy(update={"currency": payload.currency.lower()})
    if Order.objects.filter(run_id=run_id).exists():
        return  # `order_create` made it with its run
    # Started outside the API: the order has no client.
    order, _ = Order.objects.get_or_create(
        client=None,
        order_id=payload.order_id,
        defaults={
            "customer_id": payload.customer_id,
            "customer_email": payload.customer_email,
            "amount": payload.amount,
            "currency": payload.currency,
            "fraud_review_required": fraud_review_required(
                amount=payload.amount, currency=payload.currency
            ),
            "request_fingerprint": _fingerprint(payload),
            "run_id": run_id,
        },
    )
    if order.run_id != run_id:
        raise NonRetryableError(
            f"Order {payload.order_id} already exists and belongs to run {order.run_id}"
        )


def _order_find(*, client: User | None, order_id: str, idempotency_key: str | None) -> Order | None:
    orders = Order.objects.filter(client=client)
    if idempotency_key:
        by_key = orders.filter(idempotency_key=idempotency_key).first()
        if by_key is not None:
            return by_key
    return orders.filter(order_id=order_id).first()


def order_for_run(run_id: UUID) -> Order:
    return Order.objects.get(run_id=run_id)


def order_snapshot(*, run_id: UUID) -> OrderSnapshot:
    order = order_for_run(run_id)
    return OrderSnapshot(
        order_id=order.order_id,
        amount=order.amount,
        currency=order.currency,
        status=order.status,
        charge_id=order.charge_id or None,
        payment_status=order.payment_status,
        failure_reason=order.failure_reason or None,
        email_sent=order.email_sent,
    )


def _order_payment_metadata(order: Order) -> dict[str, str]:
    """What Stripe keeps on the order's PaymentIntent and refund: how a later attempt
    recognises what an earlier one created."""
    return {"order_id": order.order_id, "order_pk": str(order.pk)}


def order_charge(*, order: Order) -> Charge:
    """Charge the order's own amount, once. A second call returns the first charge.

    An order the fraud policy sends to review is only authorized (a hold, captured on
    approval by `order_capture`); the others are captured at once. Decided here, by
    `payment_capture_now`, whoever asked for the charge and however.

    Whoever calls (the agent's tool, the workflow's fallback, a retry or a replay), it
    is one operation: the key comes from the order, and the gateway recovers the
    PaymentIntent that an attempt with a lost answer may have created.

    A decline marks the order failed with the reason and raises `PaymentDeclinedError`;
    transient gateway errors propagate for the caller's retry policy.
    """
    order.refresh_from_db()
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
    try:
        charge = payment_gateway().charge(
            customer_id=order.customer_id,
            amount=order.amount,
            currency=order.currency,
            idempotency_key=payment_key(operation="charge", order_pk=order.pk),
            metadata=_order_payment_metadata(order),
            created_since=order.created_at,
            capture=payment_capture_now(amount=order.amount, currency=order.currency),
        )
    except PaymentDeclinedError as exc:
        if _payment_status_move(order, PaymentStatus.FAILED):
            Order.objects.filter(pk=order.pk, charge_id="").update(
                status=OrderStatus.FAILED, failure_reason=f"{exc.code}: {exc.reason}"[:255]
            )
        raise
    if order.payment_status == PaymentStatus.NONE:
        _payment_status_move(
            order,
            PaymentStatus.CAPTURED if charge.captured else PaymentStatus.AUTHORIZED,
            charge_id=charge.charge_id,
            charged_amount=charge.amount,
            charged_at=timezone.now(),
        )
    if charge.risk_level or charge.risk_score is not None:  # for the reviewers (orders.risk)
        Order.objects.filter(pk=order.pk).update(
            stripe_risk_level=charge.risk_level[:20], stripe_risk_score=charge.risk_score
        )
    order.refresh_from_db()
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
    order.refresh_from_db()
    if order.payment_status == PaymentStatus.AUTHORIZED:
        payment_gateway().cancel(
            charge_id=order.charge_id,
            idempotency_key=payment_key(operation="cancel", order_pk=order.pk),
        )
        _payment_status_move(order, PaymentStatus.CANCELED)
    elif order.payment_status == PaymentStatus.CAPTURED:
        _order_refund(order)


def order_check_arguments(
    *,
    order: Order,
    customer_id: str | None = None,
    amount: Decimal | None = None,
    currency: str | None = None,
    email: str | None = None,
    order_id: str | None = None,
) -> None:
    """Refuse a tool call whose arguments differ from the run's order."""
    problems = []
    if order_id is not None and order_id != order.order_id:
        problems.append(f"order_id {order_id!r} is not this run's order {order.order_id!r}")
    if customer_id is not None and customer_id != order.customer_id:
        problems.append(f"customer_id {customer_id!r} is not the order's customer")
    if amount is not None and Decimal(amount) != order.amount:
        problems.append(f"amount {amount} is not the order's amount {order.amount}")
    if currency is not None and currency.lower() != order.currency:
        problems.append(f"currency {currency!r} is not the order's currency {order.currency!r}")
    if email is not None and email.strip().lower() != order.customer_email.lower():
        problems.append(f"email {email!r} is not the order's customer email")
    if problems:
        raise OrderActionRefusedError("Refused: " + "; ".join(problems) + ".")


def order_confirm(*, order: Order) -> EmailRecord:
    """Send the confirmation, if policy allows: the order is charged (captured, not
    only held) and, above the fraud threshold, its review was approved."""
    order.refresh_from_db()
    if not order.charge_id:
        raise OrderActionRefusedError("Refused: the order has not been charged yet.")
    if order.status in (OrderStatus.FAILED, OrderStatus.REJECTED, OrderStatus.CANCELLED):
        raise OrderActionRefusedError(f"Refused: the order is {order.status}.")
    if fraud_review_required(amount=order.amount, currency=order.currency):
        review = order_fraud_review(order=order)
        if review is None or review.state != ReviewState.APPROVED:
            raise OrderActionRefusedError(
                "Refused: this order is above the fraud threshold and its review has not "
                "been approved; request fraud_review instead."
            )
    if order.payment_status != PaymentStatus.CAPTURED:
        raise OrderActionRefusedError(
            f"Refused: the payment is {order.payment_status}, not captured."
        )
    return order_confirmation_send(order=order)


def order_review_open(*, run_id: UUID) -> None:
    """Mark the order awaiting review and tell the fraud reviewers (the workflow's
    `open_review` step, just before it suspends at `fraud_review`).

    The alert never fails the step: an alert not sent (mail server down, nobody to
    tell) is sent by the next `review_reminders_send` sweep instead. Its deadline is the
    one the suspend is about to record (same timeout, a moment later)."""
    now = timezone.now()
    Order.objects.filter(run_id=run_id).exclude(status=OrderStatus.CANCELLED).update(
        status=OrderStatus.AWAITING_REVIEW, fraud_review_required=True, updated_at=now
    )
    order_event_emit(
        order=Order.objects.filter(run_id=run_id).first(), type=WebhookEvent.AWAITING_REVIEW
    )
    order = Order.objects.filter(run_id=run_id, status=OrderStatus.AWAITING_REVIEW).first()
    if order is None:
        return
    try:
        review_email_send(
            order=order,
            kind=REVIEW_ALERT,
            deadline=now + timedelta(seconds=settings.FRAUD_REVIEW_TIMEOUT),
        )
    except Exception:
        logger.exception("order %s: the reviewers' alert failed; the sweep retries", order.order_id)


class _EmailsSent(TypedDict):
    alerted: bool
    reminded: bool


def review_reminders_send(*, now: datetime | None = None) -> int:
    """Send what the fraud reviewers are owed about open reviews: the alert when it was
    not sent at opening (it failed, or nobody was there to tell), and the reminder once
    FRAUD_REVIEW_REMINDER_AT of the review's time has passed. Each at most once (see
    `review_email_send`). A wait sweep hook (`orders/apps.py`), so the
    existing once-a-minute expiry schedule runs it. Returns how many were sent."""
    now = now or timezone.now()
    share = settings.FRAUD_REVIEW_REMINDER_AT
    done = [EmailStatus.SENT, EmailStatus.SENDING]  # sending: in progress, or in doubt

    def recorded(kind: str) -> Exists:
        return Exists(
            EmailRecord.objects.filter(order__run_id=OuterRef("run_id"), kind=kind, status__in=done)
        )

    # The stubs do not follow `annotate` through a custom queryset's methods.
    reviews = cast(
        "list[WithAnnotations[FraudReview, _EmailsSent]]",
        list(
            FraudReview.objects.pending()
            .filter(deadline__gt=now)
            .annotate(alerted=recorded(REVIEW_ALERT), reminded=recorded(REVIEW_REMINDER))
            .filter(Q(alerted=False) | Q(reminded=False))
        ),
    )
    orders = Order.objects.filter(
        run_id__in=[review.run_id for review in reviews], status=OrderStatus.AWAITING_REVIEW
    ).in_bulk(field_name="run_id")
    sent = 0
    for review in reviews:
        order = orders.get(review.run_id)
        if order is None:
            continue
        due = [] if review.alerted else [REVIEW_ALERT]
        remind_at = review.created_at + (review.deadline - review.created_at) * share
        if share and not review.reminded and now >= remind_at:
            due.append(REVIEW_REMINDER)
        for kind in due:
            record = review_email_send(order=order, kind=kind, deadline=review.deadline)
            if record is not None and record.status == EmailStatus.FAILED:
                # The mail server is down: the next sweep tries again, rather than this
                # one waiting out EMAIL_TIMEOUT once per review.
                return sent
            sent += record is not None and record.status == EmailStatus.SENT
    return sent


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


def order_finish(
    *, run_id: UUID, status: OrderStatus, reason: str = "", fraud_approved: bool | None = None
) -> None:
    # A cancelled order stays cancelled, whatever a run retried afterwards concludes.
    Order.objects.filter(run_id=run_id).exclude(status=OrderStatus.CANCELLED).update(
        status=status,
        failure_reason=reason[:255],
        fraud_approved=fraud_approved,
        updated_at=timezone.now(),
    )
    order_event_emit(
        order=Order.objects.filter(run_id=run_id).first(), type=ORDER_STATUS_EVENTS.get(status)
    )


def order_confirmation_resolve(*, order: Order, sent: bool) -> WorkflowRun | None:
    """Settle a confirmation left uncertain by a dead worker (see
    `ConfirmationUncertainError`): `sent=True` records it as sent (the mail log shows it
    left), `sent=False` releases the claim so it is sent again. The order's failed run,
    if any, is then retried from its last completed step."""
    updated = EmailRecord.objects.filter(order=order, kind=CONFIRMATION, status=EmailStatus.SENDING)
    if sent:
        settled = updated.update(status=EmailStatus.SENT, sent_at=timezone.now())
    else:
        settled = updated.delete()[0]
    if not settled:
        raise NoConfirmationInDoubtError(f"Order {order.order_id} has no confirmation in doubt")
    if (
        order.run_id
        and WorkflowRun.objects.filter(pk=order.run_id, status=RunStatus.FAILED).exists()
    ):
        return run_retry(order.run_id)
    return None


def review_decide(*, order: Order, approved: bool, by: User, note: str = "") -> FraudReview:
    """Approve or reject an order's pending fraud review and resume its workflow.

    One conditional UPDATE decides races: of two reviewers clicking at once, one wins
    and the other gets `ReviewError` saying it was already decided.
    """
    if not by.has_perm(DECIDE_PERMISSION):
        raise PermissionDenied(f"{by.get_username()} may not decide fraud reviews")
    try:
        note = note_check(note)
    except OrderRuleError as exc:
        raise ReviewError(f"Note refused: {exc}") from None
    if order.run_id is None:  # what `run_resume` would find for it: no wait
        raise ReviewError(f"Order {order.order_id} has no fraud review to decide")
    try:
        run_resume(order.run_id, FRAUD_REVIEW_KEY, {"approved": approved, "note": note}, by=by)
    except WaitNotFoundError:
        raise ReviewError(f"Order {order.order_id} has no fraud review to decide") from None
    except WaitAlreadyDecidedError:
        review = order_fraud_review(order=order)
        raise ReviewError(
            f"The review of order {order.order_id} was already decided"
            + (f" ({review.state})" if review else "")
        ) from None
    except WaitExpiredError:
        raise ReviewError(
            f"The review of order {order.order_id} expired; its payment will be released"
        ) from None
    logger.info(
        "order %s: fraud review %s by %s",
        order.order_id,
        "approved" if approved else "rejected",
        by.get_username(),
    )
    return FraudReview.objects.get(run_id=order.run_id, key=FRAUD_REVIEW_KEY)


def order_cancel(*, order: Order, by: User | None = None) -> Order:
    """Cancel an order that is not finished and whose customer was not told it is
    confirmed: stop its run, give the money back (cancel the hold or refund the capture)
    and mark it cancelled. The one way to cancel an order's run: the orders admin,
    `cancel_order` and the console's run cancel all come here (see `OrdersConfig.ready`).
    `by` None is an operator at the command line.

    Once the confirmation email is claimed the customer is (being) told, so the cancel is
    refused: a refund returns the money instead. The check and the cancel hold the
    order's row, as the confirmation's claim does (`order_confirmation_send`): either
    the cancel wins and no confirmation is sent, or the claim wins and this refuses.

    Marked cancelled before the money moves, so that a charge still in flight releases
    itself (`order_charge`); calling it again on a cancelled order only retries a
    release that a gateway outage interrupted. Raises `OrderCancelError` for a finished
    or confirmed order, `PermissionDenied` without the cancel permission.
    """
    if by is not None and not by.has_perm(CANCEL_PERMISSION):
        raise PermissionDenied(f"{by.get_username()} may not cancel orders")
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order.pk)
        money_held = order.payment_status in (PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURED)
        if order.status == OrderStatus.CANCELLED and not money_held:
            raise OrderCancelError(f"Order {order.order_id} is already cancelled")
        if order.status != OrderStatus.CANCELLED:
            _order_cancel_check(order)
            if order.run_id is not None:
                try:
                    run_cancel(order.run_id)
                except RunStateError:
                    pass  # finished or failed: nothing runs any more, the money is still held
            who = by.get_username() if by is not None else "an operator"
            Order.objects.filter(pk=order.pk).update(
                status=OrderStatus.CANCELLED,
                failure_reason=f"cancelled by {who}"[:255],
                updated_at=timezone.now(),
            )
            order_event_emit(order=order, type=WebhookEvent.CANCELED)
    order_payment_release(order=order)
    order.refresh_from_db()
    logger.info("order %s cancelled; payment %s", order.order_id, order.payment_status)
    return order


def _order_cancel_check(order: Order) -> None:
    """Refuse to cancel an order whose customer was told, or is being told, that it is
    confirmed (its confirmation is claimed), or that is finished."""
    confirmation = EmailRecord.objects.filter(order=order, kind=CONFIRMATION).first()
    if confirmation is not None:
        told = (
            "went out, so the customer was told it is confirmed"
            if confirmation.status == EmailStatus.SENT
            else "is being sent (or was, by a worker that died), so the customer may already "
            "have been told it is confirmed"
        )
        raise OrderCancelError(
            f"Order {order.order_id} can no longer be cancelled: its confirmation email "
            f"{told}. Return the money with a refund instead."
        )
    if order.status not in (OrderStatus.PROCESSING, OrderStatus.AWAITING_REVIEW):
        raise OrderCancelError(f"Order {order.order_id} is {order.status}: nothing to cancel")


class OrderForkError(RunStateError):
    """The run's order is finished: a fork would move it backwards. A `RunStateError`,
    so that `run_fork` rolls the fork back and its doors report the refusal."""


_ORDER_FINISHED = (OrderStatus.COMPLETED, OrderStatus.REJECTED, OrderStatus.CANCELLED)


def order_follow_fork(*, origin: WorkflowRun, fork: WorkflowRun) -> None:
    """A forked order run continues the same order: the order moves to the fork (inside
    the fork's transaction). Its payment keys come from the order, not the run, so the
    fork recovers what the origin's attempts did at Stripe instead of repeating it.

    A finished order (completed, rejected, cancelled) is refused with `OrderForkError`:
    its customer was confirmed, or its money released, and replaying its steps would
    reopen its review or refund a confirmed order. Fork is for an order whose run failed
    or stopped before settling it (`needs_attention`)."""
    order = Order.objects.select_for_update().filter(run=origin).first()
    if order is None:
        return
    if order.status in _ORDER_FINISHED:
        raise OrderForkError(
            f"Order {order.order_id} is {order.status}: forking its run would move a "
            "finished order backwards. Fork is for failed and needs_attention runs."
        )
    Order.objects.filter(pk=order.pk).update(run=fork, updated_at=timezone.now())


def order_run_cancel(run_id: UUID | str, by: AbstractBaseUser | None) -> None:
    """Cancelling an order's run from the console or `cancel_run` cancels the order
    (its run canceller, `orders/apps.py`): its money must not stay taken.
    Refusals come back as `RunStateError`, which those doors report."""
    order = Order.objects.filter(run__pk=run_id).first()
    if order is None:  # a run whose order was never registered holds no money
        run_cancel(run_id)
        return
    try:
        # The engine passes the signed-in user, an AUTH_USER_MODEL (`User`) instance.
        order_cancel(order=order, by=cast(User | None, by))
    except PermissionDenied as exc:
        raise OrderCancelError(
            f"{exc} (cancelling order {order.order_id}'s run cancels it)"
        ) from None
    except (TransientPaymentError, NonRetryableError) as exc:
        raise OrderCancelError(
            f"Order {order.order_id} is cancelled, but its payment was not released: {exc}. "
            "Cancel it again to retry."
        ) from None
