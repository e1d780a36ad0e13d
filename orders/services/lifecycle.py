"""What the order's own run writes and reads besides money and review: the snapshot
its steps see, the tool calls' argument check, the confirmation, the finish, and the
engine hook that moves an order onto a forked run."""

import logging
from decimal import Decimal
from uuid import UUID

from django.db.models import Q
from django.utils import timezone

from workflows import RunStateError, run_retry
from workflows.engine.compiled_queries import CompiledRead, CompiledUpdate
from workflows.models import RunStatus, WorkflowRun

from ..client_webhooks.models import ORDER_STATUS_EVENTS
from ..client_webhooks.services import order_event_emit
from ..errors import OrderActionRefusedError
from ..models import (
    EmailRecord,
    EmailStatus,
    Order,
    OrderStatus,
    PaymentStatus,
    ReviewState,
)
from ..notifications import CONFIRMATION, order_confirmation_send
from ..policy import fraud_review_required
from ..schemas import OrderSnapshot
from ..selectors import EMAIL_SENT_ANNOTATION, order_email_sent, order_fraud_review

logger = logging.getLogger(__name__)


class NoConfirmationInDoubtError(Exception):
    """The order has no confirmation email in doubt (claimed, outcome unknown) to
    settle."""


# The run's steps read their order several times per run: compiled once (a fifth of
# the CPU of `Order.objects.get`, see workflows/engine/compiled_queries.py).
_order_by_run = CompiledRead(Order, "run_id")
_order_by_pk = CompiledRead(Order, "pk")
# What the workflow decides on (its snapshots, its result) includes whether the
# confirmation went out: read in the order's own statement.
_order_with_email_by_run = CompiledRead(Order, "run_id", annotations=EMAIL_SENT_ANNOTATION)
# A cancelled order stays cancelled, whatever a run retried afterwards concludes.
_order_conclude = CompiledUpdate(Order, ["run_id"], where=~Q(status=OrderStatus.CANCELLED))


def order_for_run(run_id: UUID) -> Order:
    return _order_by_run.get(run_id)


def order_exists_for_run(run_id: UUID) -> bool:
    return _order_by_run.exists(run_id)


def order_reload(order: Order) -> None:
    """`order.refresh_from_db()`, for the run's own steps."""
    _order_by_pk.refresh(order)


def order_snapshot(*, run_id: UUID) -> OrderSnapshot:
    order = _order_with_email_by_run.get(run_id)
    return OrderSnapshot(
        order_id=order.order_id,
        amount=order.amount,
        currency=order.currency,
        status=order.status,
        charge_id=order.charge_id or None,
        payment_status=order.payment_status,
        failure_reason=order.failure_reason or None,
        email_sent=order_email_sent(order),
    )


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
    only held) and, above the fraud threshold, its review was approved. `order` as just
    read (`order_for_run`, as its doors do); the claim re-reads its status under lock
    (`order_confirmation_send`), so a cancel in between still wins."""
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


def order_finish(
    *, run_id: UUID, status: OrderStatus, reason: str = "", fraud_approved: bool | None = None
) -> Order | None:
    """Record the run's conclusion on its order; returns the order as it now is (with
    `order_email_sent` read in the same statement), None if the run has none."""
    _order_conclude.update(
        run_id,
        status=status,
        failure_reason=reason[:255],
        fraud_approved=fraud_approved,
        updated_at=timezone.now(),
    )
    order = _order_with_email_by_run.first(run_id)
    order_event_emit(order=order, type=ORDER_STATUS_EVENTS.get(status))
    return order


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
