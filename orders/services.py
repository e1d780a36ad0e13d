"""Writes of the orders domain. The workflow, the agent's tools, the API, admin and the
commands all go through these functions."""

import hashlib
import json
import logging
from decimal import Decimal
from uuid import UUID

from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.utils import timezone

from workflows import (
    NonRetryableError,
    WaitAlreadyDecidedError,
    WaitExpiredError,
    WaitNotFoundError,
    run_resume,
    run_retry,
    workflow_start,
)
from workflows.models import RunStatus, WorkflowRun

from .models import (
    FRAUD_REVIEW_KEY,
    ORDER_WORKFLOW_ID,
    EmailRecord,
    EmailStatus,
    FraudReview,
    Order,
    OrderStatus,
    ReviewState,
)
from .notifications import CONFIRMATION, order_confirmation_send
from .payments import Charge, PaymentDeclinedError, payment_gateway, payment_key
from .policy import fraud_review_required
from .schemas import OrderPayload, OrderSnapshot

logger = logging.getLogger(__name__)

DECIDE_PERMISSION = "orders.decide_fraud_review"
REVIEW_NOTE_MAX_LENGTH = 1000


class OrderConflictError(Exception):
    """The order id (or idempotency key) exists with a different request body."""


class OrderMismatchError(NonRetryableError):
    """A tool was asked to act on something other than the run's own order."""


class ConfirmationNotUncertainError(Exception):
    """There is no confirmation email in doubt for this order."""


class ReviewError(Exception):
    """The review cannot be decided now: nothing to decide, already decided, expired."""


def _fingerprint(payload: OrderPayload) -> str:
    canonical = json.dumps(payload.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def order_create(
    *,
    payload: OrderPayload,
    client: AbstractBaseUser | None = None,
    idempotency_key: str | None = None,
) -> tuple[Order, bool]:
    """Create the order for `client` (None: the console's or a command's) and start its
    workflow in one transaction, or return the existing order for a repeat of the same
    request. Returns (order, created).

    Order ids and idempotency keys are the client's own: only its orders are repeats or
    conflicts. Raises `OrderConflictError` when the client used the order id or
    idempotency key with a different body.
    """
    # Validated again: a payload built with `model_construct` or `model_copy(update=...)`
    # skipped the order rules, and no door may. Raises pydantic's ValidationError.
    payload = OrderPayload.model_validate(payload.model_dump())
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
                    request_fingerprint=fingerprint,
                    idempotency_key=idempotency_key,
                )
                order.run = workflow_start(ORDER_WORKFLOW_ID, payload)
                order.save(update_fields=["run"])
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
            "request_fingerprint": _fingerprint(payload),
            "run_id": run_id,
        },
    )
    if order.run_id != run_id:
        raise NonRetryableError(
            f"Order {payload.order_id} already exists and belongs to run {order.run_id}"
        )


def _order_find(
    *, client: AbstractBaseUser | None, order_id: str, idempotency_key: str | None
) -> Order | None:
    orders = Order.objects.filter(client=client)
    if idempotency_key:
        by_key = orders.filter(idempotency_key=idempotency_key).first()
        if by_key is not None:
            return by_key
    return orders.filter(order_id=order_id).first()


def order_for_run(run_id: object) -> Order:
    return Order.objects.get(run_id=run_id)


def order_snapshot(*, run_id: object) -> OrderSnapshot:
    order = order_for_run(run_id)
    return OrderSnapshot(
        order_id=order.order_id,
        amount=order.amount,
        currency=order.currency,
        status=order.status,
        charge_id=order.charge_id or None,
        failure_reason=order.failure_reason or None,
        email_sent=order.email_sent,
    )


def _order_payment_metadata(order: Order) -> dict[str, str]:
    """What Stripe keeps on the order's PaymentIntent and refund: how a later attempt
    recognises what an earlier one created."""
    return {"order_id": order.order_id, "run_id": str(order.run_id)}


def order_charge(*, order: Order) -> Charge:
    """Charge the order's own amount, once. A second call returns the first charge.

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
            status="succeeded",
            amount=order.charged_amount or order.amount,
            currency=order.currency,
        )
    if order.status == OrderStatus.FAILED:
        raise PaymentDeclinedError(order.failure_reason or "payment was declined")
    try:
        charge = payment_gateway().charge(
            customer_id=order.customer_id,
            amount=order.amount,
            currency=order.currency,
            idempotency_key=payment_key(
                operation="charge", order_id=order.order_id, run_id=order.run_id
            ),
            metadata=_order_payment_metadata(order),
            created_since=order.created_at,
        )
    except PaymentDeclinedError as exc:
        Order.objects.filter(pk=order.pk, charge_id="").update(
            status=OrderStatus.FAILED,
            failure_reason=f"{exc.code}: {exc.reason}"[:255],
            updated_at=timezone.now(),
        )
        raise
    Order.objects.filter(pk=order.pk, charge_id="").update(
        charge_id=charge.charge_id,
        charged_amount=charge.amount,
        charged_at=timezone.now(),
        updated_at=timezone.now(),
    )
    return charge


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
        raise OrderMismatchError("Refused: " + "; ".join(problems) + ".")


def order_review(order: Order) -> FraudReview | None:
    return FraudReview.objects.filter(run_id=order.run_id).first()


def order_confirm(*, order: Order) -> EmailRecord:
    """Send the confirmation, if policy allows: the order is charged and, above the
    fraud threshold, its review was approved."""
    order.refresh_from_db()
    if not order.charge_id:
        raise OrderMismatchError("Refused: the order has not been charged yet.")
    if order.status in (OrderStatus.FAILED, OrderStatus.REJECTED):
        raise OrderMismatchError(f"Refused: the order is {order.status}.")
    if fraud_review_required(amount=order.amount, currency=order.currency):
        review = order_review(order)
        if review is None or review.state != ReviewState.APPROVED:
            raise OrderMismatchError(
                "Refused: this order is above the fraud threshold and its review has not "
                "been approved; request fraud_review instead."
            )
    return order_confirmation_send(order=order)


def order_review_open(*, run_id: object) -> None:
    Order.objects.filter(run_id=run_id).update(
        status=OrderStatus.AWAITING_REVIEW, fraud_review_required=True, updated_at=timezone.now()
    )


def order_refund(*, run_id: object) -> str:
    """Refund the order's charge in full, once; returns the refund id (the same on a
    retry). The key comes from the order, and the gateway recovers a refund whose
    answer was lost."""
    order = order_for_run(run_id)
    if order.refund_id:
        return order.refund_id
    refund = payment_gateway().refund(
        charge_id=order.charge_id,
        amount=order.charged_amount or order.amount,
        currency=order.currency,
        idempotency_key=payment_key(
            operation="refund", order_id=order.order_id, run_id=order.run_id
        ),
        metadata=_order_payment_metadata(order),
    )
    Order.objects.filter(pk=order.pk, refund_id="").update(
        refund_id=refund.refund_id, refunded_at=timezone.now(), updated_at=timezone.now()
    )
    return refund.refund_id


def order_finish(
    *, run_id: object, status: OrderStatus, reason: str = "", fraud_approved: bool | None = None
) -> None:
    Order.objects.filter(run_id=run_id).update(
        status=status,
        failure_reason=reason[:255],
        fraud_approved=fraud_approved,
        updated_at=timezone.now(),
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
        raise ConfirmationNotUncertainError(f"Order {order.order_id} has no confirmation in doubt")
    if (
        order.run_id
        and WorkflowRun.objects.filter(pk=order.run_id, status=RunStatus.FAILED).exists()
    ):
        return run_retry(order.run_id)
    return None


def review_decide(
    *, order: Order, approved: bool, by: AbstractBaseUser, note: str = ""
) -> FraudReview:
    """Approve or reject an order's pending fraud review and resume its workflow.

    One conditional UPDATE decides races: of two reviewers clicking at once, one wins
    and the other gets `ReviewError` saying it was already decided.
    """
    if not by.has_perm(DECIDE_PERMISSION):
        raise PermissionDenied(f"{by.get_username()} may not decide fraud reviews")
    note = note.strip()
    if len(note) > REVIEW_NOTE_MAX_LENGTH:
        raise ReviewError(f"The note is too long (at most {REVIEW_NOTE_MAX_LENGTH} characters)")
    if "\x00" in note:
        raise ReviewError("The note contains a NUL character")
    try:
        run_resume(order.run_id, FRAUD_REVIEW_KEY, {"approved": approved, "note": note}, by=by)
    except WaitNotFoundError:
        raise ReviewError(f"Order {order.order_id} has no fraud review to decide") from None
    except WaitAlreadyDecidedError:
        review = order_review(order)
        raise ReviewError(
            f"The review of order {order.order_id} was already decided"
            + (f" ({review.state})" if review else "")
        ) from None
    except WaitExpiredError:
        raise ReviewError(
            f"The review of order {order.order_id} expired; the order will be refunded"
        ) from None
    logger.info(
        "order %s: fraud review %s by %s",
        order.order_id,
        "approved" if approved else "rejected",
        by.get_username(),
    )
    return FraudReview.objects.get(run_id=order.run_id, key=FRAUD_REVIEW_KEY)
