"""Intake: an order created, or recognised as a repeat, with its run started (or
registered when the run was started outside `order_create`)."""

import hashlib
import json
import logging
from uuid import UUID, uuid4

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from workflows import NonRetryableError, workflow_start

from ..client_webhooks.models import WebhookEvent
from ..client_webhooks.services import order_event_emit
from ..models import ORDER_WORKFLOW_ID, Order
from ..policy import fraud_review_required
from ..rules import idempotency_key_check
from ..schemas import OrderPayload
from .lifecycle import order_exists_for_run

logger = logging.getLogger(__name__)


class OrderConflictError(Exception):
    """The order id (or idempotency key) exists with a different request body."""


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
    # Inserted first, looked for only when the unique constraints refuse the row (a
    # repeat, or a concurrent request that created it first): a new order, the usual
    # case, costs no lookup. It names its run, started next, in its INSERT.
    try:
        with transaction.atomic():
            run_id = uuid4()
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
                run_id=run_id,
            )
            order.run = workflow_start(ORDER_WORKFLOW_ID, payload, run_id=run_id)
            order_event_emit(order=order, type=WebhookEvent.CREATED)
        return order, True
    except IntegrityError:
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
    if order_exists_for_run(run_id):
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
