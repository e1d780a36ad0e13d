"""Stripe's signed webhooks (`POST /webhooks/stripe/`): they keep each order's
`payment_status` true when something happens outside the service (a refund made in the
dashboard, a dispute, an authorization that expired, a Radar review).

The view (`orders.api.stripe_webhook_view`, the HTTP edge) verifies the signature
(`stripe.WebhookSignature.verify_header` with `STRIPE_WEBHOOK_SECRET`), checks the
event's shape (`stripe_event_parse`: a signed event of the wrong shape is stored as
rejected, by `stripe_event_reject`, and answered 400) and hands it to
`stripe_event_apply`, which stores it once by its id and applies it in the same
transaction: a redelivered event finds its row and changes nothing, and an event whose
handling failed is not stored, so Stripe's retry applies it.

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

import hashlib
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any

from django.db import transaction
from django.utils import timezone
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .models import Order, PaymentStatus, StripeEvent
from .payments import from_minor_units, to_minor_units
from .services.payments import order_payment_status_set, order_radar_review_set

logger = logging.getLogger(__name__)

NO_ORDER = "no matching order"
REJECTED = "rejected: "
JSONDict = dict[str, Any]

# Stripe's largest amount has 12 digits (most currencies allow 8).
MinorUnits = Annotated[int, Field(ge=0, le=999_999_999_999)]
StripeId = Annotated[str, Field(min_length=1, max_length=255)]


class _Shape(BaseModel):
    # Strict: "25000" is not an amount, nor 1.0, nor true. Fields no handler reads are
    # kept, unchecked.
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class _Expanded(_Shape):
    id: StripeId


class _PaymentError(_Shape):
    code: str | None = None


class StripeObject(_Shape):
    """The fields of an event's `data.object` that a handler reads, as Stripe types them
    (a charge, dispute, PaymentIntent or Radar review)."""

    id: StripeId | None = None
    object: str | None = None
    payment_intent: StripeId | _Expanded | None = None
    metadata: dict[str, str] | None = None
    amount: MinorUnits | None = None
    amount_refunded: MinorUnits | None = None
    refunded: bool | None = None
    status: str | None = None
    reason: str | None = None
    opened_reason: str | None = None
    cancellation_reason: str | None = None
    last_payment_error: _PaymentError | None = None


class _EventData(_Shape):
    object: dict[str, Any]


class StripeEventIn(_Shape):
    """A v1 event's envelope, within what `StripeEvent` stores."""

    id: StripeId
    type: str = Field(min_length=1, max_length=100)
    data: _EventData


class MalformedEventError(ValueError):
    """A signed event this service cannot read; the message says where, never what."""


Handler = Callable[[Order, StripeObject], str]


def stripe_event_parse(event: Any) -> tuple[StripeEventIn, StripeObject | None]:
    """Check a verified event's shape, in one place, before anything applies it: the
    envelope always, and the fields of `data.object` its handler reads when it has one
    (another type's object may use the same names otherwise). Returns the envelope and
    that object (None for a type without a handler); raises `MalformedEventError`."""
    if _holds_nul(event):
        raise MalformedEventError("a NUL character")
    try:
        envelope = StripeEventIn.model_validate(event)
    except ValidationError as exc:
        raise MalformedEventError(_where(exc)) from None
    if envelope.type not in HANDLERS:
        return envelope, None
    try:
        return envelope, StripeObject.model_validate(envelope.data.object)
    except ValidationError as exc:
        raise MalformedEventError(_where(exc, "data.object.")) from None


def _where(exc: ValidationError, prefix: str = "") -> str:
    """Where the event is wrong and what is expected there (never the value: it is the
    sender's text)."""
    problems = [
        f"{prefix}{'.'.join(str(part)[:40] for part in error['loc'])}: {error['msg']}"
        if error["loc"] or prefix
        else f"the event: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)
    ]
    return "; ".join(problems[:3])


def _holds_nul(value: Any) -> bool:
    """PostgreSQL's JSON cannot store a NUL character, in a key or a string."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def stripe_event_reject(*, event: Any, body: bytes, problem: str) -> StripeEvent:
    """Keep a signed event that failed `stripe_event_parse`, once, for the operators
    (admin, Stripe events): by its id when it has a usable one, else by the body's hash,
    so that Stripe's retries of it add nothing."""
    fields = event if isinstance(event, dict) else {}
    event_id, type_ = fields.get("id"), fields.get("type")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 255 or _holds_nul(event_id):
        event_id = f"malformed:{hashlib.sha256(body).hexdigest()}"
    record, _ = StripeEvent.objects.get_or_create(
        event_id=event_id,
        defaults={
            "type": _without_nul(type_)[:100] if isinstance(type_, str) else "",
            "payload": _without_nul(event),
            "outcome": f"{REJECTED}{problem}"[:255],
            "processed_at": timezone.now(),
        },
    )
    return record


def stripe_event_apply(
    *, envelope: StripeEventIn, obj: StripeObject | None, payload: JSONDict
) -> tuple[StripeEvent, bool]:
    """Store a verified, well-formed event once by its id and apply it, in one
    transaction. Returns (record, created); a redelivery returns the stored record,
    untouched."""
    with transaction.atomic():
        record, created = StripeEvent.objects.get_or_create(
            event_id=envelope.id, defaults={"type": envelope.type, "payload": payload}
        )
        if not created:
            logger.info(
                "Stripe event %s (%s) redelivered: nothing to do", record.event_id, record.type
            )
            return record, False
        handler = HANDLERS.get(record.type)
        if handler is None or obj is None:
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


def _intent_id(obj: StripeObject) -> str | None:
    """The PaymentIntent an event's object belongs to (a PaymentIntent is its own)."""
    if obj.object == "payment_intent":
        return obj.id
    intent = obj.payment_intent
    return intent.id if isinstance(intent, _Expanded) else intent


def _order_for(obj: StripeObject) -> Order | None:
    intent_id = _intent_id(obj)
    if intent_id:
        order = Order.objects.filter(charge_id=intent_id).first()
        if order is not None:
            return order
    # A PaymentIntent the order never recorded (declined, or its answer was lost): the
    # metadata the service put on it names the order's primary key.
    order_pk = (obj.metadata or {}).get("order_pk", "")
    if not (order_pk.isascii() and order_pk.isdigit() and len(order_pk) <= 18):
        return None  # not one of ours ("²" is a digit to Python, not to int())
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


def _charge_refunded(order: Order, charge: StripeObject) -> str:
    refunded, amount = charge.amount_refunded or 0, charge.amount or 0
    partial = refunded < amount and not charge.refunded
    status = PaymentStatus.PARTIALLY_REFUNDED if partial else PaymentStatus.REFUNDED
    # Never more than was charged: the column holds an order's amount, no more.
    charged = order.charged_amount or order.amount
    before = order.payment_status
    moved = order_payment_status_set(
        order=order,
        status=status,
        reason=f"charge.refunded {refunded} of {amount}",
        refunded_amount=min(from_minor_units(refunded, order.currency), charged)
        if refunded
        else None,
    )
    return _outcome(before, status, moved)


def _dispute_created(order: Order, dispute: StripeObject) -> str:
    return _set(order, PaymentStatus.DISPUTED, f"charge.dispute.created ({dispute.reason})")


def _dispute_closed(order: Order, dispute: StripeObject) -> str:
    outcome = dispute.status
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
    partial = refunded + (dispute.amount or charged) < charged
    return _set(order, PaymentStatus.PARTIALLY_REFUNDED if partial else PaymentStatus.REFUNDED, why)


def _intent_canceled(order: Order, intent: StripeObject) -> str:
    why = f"payment_intent.canceled ({intent.cancellation_reason or 'no reason'})"
    return _set(order, PaymentStatus.CANCELED, why)


def _intent_failed(order: Order, intent: StripeObject) -> str:
    code = intent.last_payment_error.code if intent.last_payment_error else None
    why = f"payment_intent.payment_failed ({code or 'no code'})"
    return _set(order, PaymentStatus.FAILED, why)


def _review_opened(order: Order, review: StripeObject) -> str:
    text = f"open: {review.opened_reason or review.reason or 'unknown'}"
    written = order_radar_review_set(order=order, review=text, closed=False)
    return f"radar review {text}" if written else "radar review already closed"


def _review_closed(order: Order, review: StripeObject) -> str:
    text = f"closed: {review.reason or 'unknown'}"
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
