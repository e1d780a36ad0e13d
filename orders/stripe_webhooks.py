"""Stripe's signed webhooks (`POST /webhooks/stripe/`): they keep each order's
`payment_status` true when something happens outside the service (a refund made in the
dashboard, a dispute, an authorization that expired, a Radar review).

The view only verifies the signature (`stripe.Webhook.construct_event` with
`STRIPE_WEBHOOK_SECRET`) and hands the event to `stripe_event_apply`, which stores it
once by its id and applies it in the same transaction: a redelivered event finds its
row and changes nothing, and an event whose handling failed is not stored, so Stripe's
retry applies it.

Event → the order's payment status (every move through `order_payment_status_set`,
whose transition table refuses what would go backwards):

- `charge.refunded` → `refunded`, or `partially_refunded` while `amount_refunded` is
  less than the charge's `amount`; `amount_refunded` is kept (`Order.refunded_amount`).
- `charge.dispute.created` → `disputed`, remembering where the money was.
- `charge.dispute.closed` → back where the money was when the dispute opened when `won`
  (or `warning_closed`: an inquiry that never became a chargeback), so a refund is
  never forgotten; `lost` means the funds were withdrawn: `refunded`, or
  `partially_refunded` while what was refunded and withdrawn is less than the charge.
- `payment_intent.canceled` → `canceled` (and a note on an order awaiting review).
- `payment_intent.payment_failed` → `failed`.
- `review.opened` / `review.closed` (Radar) → `Order.radar_review`; no money moves.

The order is found by its PaymentIntent (`Order.charge_id`, or a charge's, dispute's or
review's `payment_intent`), else by the PaymentIntent's `metadata[order_pk]` when that
order has no other PaymentIntent; never by `order_id`, which is unique per client only.
An event about nothing of ours is stored as "no matching order" and acknowledged.
"""

import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import stripe
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .metrics import stripe_webhook_counted
from .models import Order, PaymentStatus, StripeEvent
from .payments import from_minor_units, to_minor_units
from .services import order_payment_status_set, order_radar_review_set

logger = logging.getLogger(__name__)

NO_ORDER = "no matching order"
JSONDict = dict[str, Any]
Handler = Callable[[Order, JSONDict], str]


@csrf_exempt
@require_POST
def stripe_webhook_view(request: HttpRequest) -> HttpResponse:
    """Verify the signature, then apply the event once. Never accepts an unsigned event:
    without a secret the endpoint is closed (503, and the log says why)."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        logger.error("Stripe webhook refused: STRIPE_WEBHOOK_SECRET is not set")
        stripe_webhook_counted(None, False, reason="unconfigured")
        return HttpResponse("Stripe webhooks are not configured.", status=503)
    try:
        event = stripe.Webhook.construct_event(
            request.body, request.headers.get("Stripe-Signature"), secret
        ).to_dict()
    except stripe.SignatureVerificationError:
        logger.warning("Stripe webhook refused: bad or missing signature")
        stripe_webhook_counted(None, False, reason="signature")
        return HttpResponse("Invalid signature.", status=400)
    except ValueError:  # not UTF-8 or not JSON, though signed
        logger.warning("Stripe webhook refused: the body is not a JSON event")
        stripe_webhook_counted(None, False, reason="malformed")
        return HttpResponse("Malformed event.", status=400)
    if not isinstance(event.get("id"), str) or not isinstance(event.get("type"), str):
        logger.warning("Stripe webhook refused: an event without id or type")
        stripe_webhook_counted(None, False, reason="malformed")
        return HttpResponse("Malformed event.", status=400)
    record, created = stripe_event_apply(event)
    stripe_webhook_counted(record.type, True)
    return JsonResponse({"received": True, "duplicate": not created, "outcome": record.outcome})


def stripe_event_apply(event: JSONDict) -> tuple[StripeEvent, bool]:
    """Store a verified event once by its id and apply it, in one transaction.
    Returns (record, created); a redelivery returns the stored record, untouched."""
    with transaction.atomic():
        record, created = StripeEvent.objects.get_or_create(
            event_id=event["id"], defaults={"type": event["type"], "payload": event}
        )
        if not created:
            logger.info(
                "Stripe event %s (%s) redelivered: nothing to do", record.event_id, record.type
            )
            return record, False
        obj = (event.get("data") or {}).get("object") or {}
        handler = HANDLERS.get(record.type)
        if handler is None:
            record.outcome = "ignored: not handled"
        else:
            record.order = _order_for(obj)
            if record.order is None:
                record.outcome = NO_ORDER
            else:
                record.outcome = handler(record.order, obj)[:255]
        record.processed_at = timezone.now()
        record.save(update_fields=["order", "outcome", "processed_at"])
    logger.info("Stripe event %s (%s): %s", record.event_id, record.type, record.outcome)
    return record, True


# --- finding the order ----------------------------------------------------------------


def _intent_id(obj: JSONDict) -> str | None:
    """The PaymentIntent an event's object belongs to (a PaymentIntent is its own)."""
    if obj.get("object") == "payment_intent":
        return obj.get("id")
    intent = obj.get("payment_intent")
    if isinstance(intent, dict):  # expanded
        intent = intent.get("id")
    return intent if isinstance(intent, str) and intent else None


def _order_for(obj: JSONDict) -> Order | None:
    intent_id = _intent_id(obj)
    if intent_id:
        order = Order.objects.filter(charge_id=intent_id).first()
        if order is not None:
            return order
    # A PaymentIntent the order never recorded (declined, or its answer was lost): the
    # metadata the service put on it names the order's primary key.
    order_pk = (obj.get("metadata") or {}).get("order_pk")
    if not isinstance(order_pk, str) or not order_pk.isdigit():
        return None
    order = Order.objects.filter(pk=int(order_pk)).first()
    if order is None or (order.charge_id and order.charge_id != intent_id):
        return None  # that order's money is on another PaymentIntent
    return order


# --- handlers: each returns the outcome stored on the event --------------------------


def _set(order: Order, status: PaymentStatus, why: str) -> str:
    before = order.payment_status
    moved = order_payment_status_set(order=order, status=status, reason=why)
    return _outcome(before, status, moved)


def _outcome(before: str, status: PaymentStatus, moved: bool) -> str:
    """What a move did, for the event's record."""
    if not moved:
        return f"payment stays {before}: not moved to {status}"
    if before == status:
        return f"payment already {status}"
    return f"payment {before} → {status}"


def _charge_refunded(order: Order, charge: JSONDict) -> str:
    refunded, amount = charge.get("amount_refunded") or 0, charge.get("amount") or 0
    partial = refunded < amount and not charge.get("refunded")
    status = PaymentStatus.PARTIALLY_REFUNDED if partial else PaymentStatus.REFUNDED
    currency = str(charge.get("currency") or order.currency)
    before = order.payment_status
    moved = order_payment_status_set(
        order=order,
        status=status,
        reason=f"charge.refunded {refunded} of {amount}",
        refunded_amount=from_minor_units(refunded, currency) if refunded else None,
    )
    return _outcome(before, status, moved)


def _dispute_created(order: Order, dispute: JSONDict) -> str:
    return _set(order, PaymentStatus.DISPUTED, f"charge.dispute.created ({dispute.get('reason')})")


def _dispute_closed(order: Order, dispute: JSONDict) -> str:
    outcome = dispute.get("status")
    why = f"charge.dispute.closed ({outcome})"
    before = PaymentStatus(order.payment_status_before_dispute or PaymentStatus.CAPTURED)
    if outcome in ("won", "warning_closed"):
        # The money is back where it was when the dispute opened: a refund made before
        # it stays a refund.
        return _set(order, before, why)
    if outcome != "lost":
        return f"ignored: dispute status {outcome}"
    # Lost: the disputed amount was withdrawn, on top of what was refunded before.
    charged = to_minor_units(order.charged_amount or order.amount, order.currency)
    refunded = to_minor_units(order.refunded_amount or Decimal(0), order.currency)
    if before == PaymentStatus.REFUNDED:
        refunded = charged
    partial = refunded + (dispute.get("amount") or charged) < charged
    return _set(order, PaymentStatus.PARTIALLY_REFUNDED if partial else PaymentStatus.REFUNDED, why)


def _intent_canceled(order: Order, intent: JSONDict) -> str:
    why = f"payment_intent.canceled ({intent.get('cancellation_reason') or 'no reason'})"
    return _set(order, PaymentStatus.CANCELED, why)


def _intent_failed(order: Order, intent: JSONDict) -> str:
    error = intent.get("last_payment_error") or {}
    why = f"payment_intent.payment_failed ({error.get('code') or 'no code'})"
    return _set(order, PaymentStatus.FAILED, why)


def _review_opened(order: Order, review: JSONDict) -> str:
    text = f"open: {review.get('opened_reason') or review.get('reason') or 'unknown'}"
    written = order_radar_review_set(order=order, review=text, closed=False)
    return f"radar review {text}" if written else "radar review already closed"


def _review_closed(order: Order, review: JSONDict) -> str:
    text = f"closed: {review.get('reason') or 'unknown'}"
    order_radar_review_set(order=order, review=text, closed=True)
    return f"radar review {text}"


HANDLERS: dict[str, Handler] = {
    "charge.refunded": _charge_refunded,
    "charge.dispute.created": _dispute_created,
    "charge.dispute.closed": _dispute_closed,
    "payment_intent.canceled": _intent_canceled,
    "payment_intent.payment_failed": _intent_failed,
    "review.opened": _review_opened,
    "review.closed": _review_closed,
}
