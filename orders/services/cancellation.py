"""Cancelling an order: its run stopped, its money released, and the engine hook that
makes cancelling an order's run cancel the order."""

import logging
from typing import cast
from uuid import UUID

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from workflows import NonRetryableError, RunStateError, run_cancel

from ..client_webhooks.models import WebhookEvent
from ..client_webhooks.services import order_event_emit
from ..errors import PaymentReleasePendingError
from ..models import EmailRecord, EmailStatus, Order, OrderStatus, PaymentStatus
from ..notifications import CONFIRMATION
from ..payments import TransientPaymentError
from .payments import order_payment_release

logger = logging.getLogger(__name__)


CANCEL_PERMISSION = "orders.cancel_order"


class OrderCancelError(RunStateError):
    """The order cannot be cancelled (it is finished). A `RunStateError`, so that
    cancelling its run from the console or `cancel_run` reports it like any refusal."""


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
    or confirmed order, `PermissionDenied` without the cancel permission, and
    `PaymentReleasePendingError` when the order is cancelled but the gateway failed to
    give the money back.
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
    try:
        order_payment_release(order=order)
    except (TransientPaymentError, NonRetryableError) as exc:  # the gateway
        raise PaymentReleasePendingError(order_id=order.order_id, cause=exc) from exc
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
    except PaymentReleasePendingError as exc:
        raise OrderCancelError(f"{exc}. Cancel it again to retry.") from None
