"""Stripe's webhook endpoint (`POST /webhooks/stripe/`): the HTTP edge of
`orders.stripe_webhooks`, which parses and applies the events. Here: the signature, the
body, the status codes and the metrics."""

import json
import logging
from typing import Any

import stripe
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_POST

from orders.metrics import stripe_webhook_counted
from orders.stripe_webhooks import (
    MalformedEventError,
    stripe_event_apply,
    stripe_event_parse,
    stripe_event_reject,
)

# Under the domain module's name, as before the view moved here: operators filter on it.
logger = logging.getLogger("orders.stripe_webhooks")


@csrf_exempt
@require_POST
def stripe_webhook_view(request: HttpRequest) -> HttpResponse:
    """Verify the signature, check the event's shape, then apply it once. Never accepts
    an unsigned event: without a secret the endpoint is closed (503, and the log says
    why). A signed event of the wrong shape is stored as rejected and answered 400
    (Stripe would retry a 500 for days)."""
    if not settings.STRIPE_WEBHOOK_SECRET:
        logger.error("Stripe webhook refused: STRIPE_WEBHOOK_SECRET is not set")
        stripe_webhook_counted(None, False, reason="unconfigured")
        return HttpResponse("Stripe webhooks are not configured.", status=503)
    try:
        event = _verified(request.body, request.headers.get("Stripe-Signature"))
    except stripe.SignatureVerificationError:
        logger.warning("Stripe webhook refused: bad or missing signature")
        stripe_webhook_counted(None, False, reason="signature")
        return HttpResponse("Invalid signature.", status=400)
    except ValueError:  # not UTF-8 or not JSON, though signed
        logger.warning("Stripe webhook refused: the body is not a JSON event")
        stripe_webhook_counted(None, False, reason="malformed")
        return HttpResponse("Malformed event.", status=400)
    try:
        envelope, obj = stripe_event_parse(event)
    except MalformedEventError as exc:
        record = stripe_event_reject(event=event, body=request.body, problem=str(exc))
        logger.warning("Stripe webhook refused: event %s is malformed: %s", record.event_id, exc)
        stripe_webhook_counted(None, False, reason="malformed")
        return HttpResponse(f"Malformed event: {exc}", status=400)
    record, created = stripe_event_apply(envelope=envelope, obj=obj, payload=event)
    stripe_webhook_counted(record.type, True)
    return JsonResponse({"received": True, "duplicate": not created, "outcome": record.outcome})


@sensitive_variables()
def _verified(body: bytes, header: str | None) -> Any:
    """The signed body, parsed; raises `stripe.SignatureVerificationError`, or
    ValueError for a body that is not JSON. Every variable here and in what it calls
    (the secret, under whatever name) is hidden from error pages and reports."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    stripe.WebhookSignature.verify_header(
        body,
        header,
        secret,
        tolerance=stripe.Webhook.DEFAULT_TOLERANCE,  # 5 min: replays
    )
    return json.loads(body, parse_constant=_not_json)


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")  # no database stores NaN in JSON
