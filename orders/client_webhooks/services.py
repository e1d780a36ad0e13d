"""Signed order-status webhooks to the API clients: their endpoints, the rules a URL must
pass, the events, and the signature. Delivery itself is the `webhook_delivery` workflow
(`delivery.py`).

- An event is emitted from one place, `order_event_emit`, called by the services where
  an order's status (or its payment's) changes. It only writes delivery rows and starts
  their runs, in the caller's transaction; it never raises, so it can neither block nor
  fail the order's own workflow.
- One event per (order, type): its id is derived from both, and a delivery is unique on
  (endpoint, event id), so a retried or replayed step emits nothing new. The id is also
  the `webhook-id` header, the same on every attempt, for receivers to deduplicate.
- Signatures follow Standard Webhooks (the `standardwebhooks` package).
- A URL must be https (unless WEBHOOKS_ALLOW_HTTP) and every address its host resolves
  to must be public (unless WEBHOOKS_ALLOW_PRIVATE): checked when the endpoint is
  registered and again before every attempt, which then connects to a checked address
  (DNS rebinding).
"""

import base64
import ipaddress
import json
import logging
import secrets
import socket
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from standardwebhooks import Webhook

from orders.models import Order
from orders.presenters import order_presented
from orders.selectors import orders_list
from workflows import RunStateError, run_cancel, workflow_start
from workflows.engine.compiled_queries import CompiledRead
from workflows.models import ACTIVE_RUN_STATUSES

from .models import (
    ORDER_STATUS_EVENTS,
    PAYMENT_STATUS_EVENTS,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

logger = logging.getLogger(__name__)

WEBHOOK_DELIVERY_WORKFLOW_ID = "webhook_delivery"
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
MAX_ENDPOINTS_PER_CLIENT = 20
URL_MAX_LENGTH = 2048
DEFAULT_PORTS = {"https": 443, "http": 80}
# Event ids are derived, not drawn: the same order and type give the same id every time.
EVENT_ID_NAMESPACE = uuid.UUID("5f0f6c1e-3a47-4d0b-9a59-7c1f2f4f8e21")


class WebhookRetryError(Exception):
    """The delivery cannot be retried now (delivered, in flight, or its endpoint is off)."""


# --- URLs: the server-side request forgery rules -----------------------------------------


def _refuse(message: str) -> ValidationError:
    return ValidationError({"url": [message]})


def _address_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    embedded = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        embedded += [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    return all(
        a.is_global
        and not (
            a.is_private
            or a.is_loopback
            or a.is_link_local
            or a.is_multicast
            or a.is_reserved
            or a.is_unspecified
        )
        for a in embedded
    )


def webhook_url_addresses(url: str) -> list[str]:
    """The addresses `url`'s host resolves to, every one of them allowed; else
    `ValidationError({"url": [...]})`. Called at registration and before each attempt."""
    if len(url) > URL_MAX_LENGTH:
        raise _refuse(f"Ensure the URL has at most {URL_MAX_LENGTH} characters.")
    try:
        URLValidator(schemes=list(DEFAULT_PORTS))(url)
        parts = urlsplit(url)
        port = parts.port
    except (ValidationError, ValueError):
        raise _refuse("Enter a valid http(s) URL.") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not settings.WEBHOOKS_ALLOW_HTTP:
        raise _refuse(
            "The URL must use https (plain http is allowed only where the service's "
            "operator sets WEBHOOKS_ALLOW_HTTP=1, for development)."
        )
    if parts.username is not None or parts.password is not None:
        raise _refuse("Put no credentials in the URL: receivers verify the signature.")
    host = parts.hostname or ""
    try:
        infos = socket.getaddrinfo(host, port or DEFAULT_PORTS[scheme], type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise _refuse(f"The host {host!r} does not resolve.") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not settings.WEBHOOKS_ALLOW_PRIVATE:
        for address in addresses:
            if not _address_public(address):
                raise _refuse(
                    f"The host {host!r} resolves to {address}, which is not a public address "
                    "(loopback, private, link-local, multicast, reserved or unspecified); "
                    "such addresses are allowed only where the service's operator sets "
                    "WEBHOOKS_ALLOW_PRIVATE=1 (tests, a receiver on the same network)."
                )
    return addresses


def _events_clean(events: Any) -> list[str]:
    if not isinstance(events, list) or not events:
        raise ValidationError({"events": ["Give a non-empty list of event types."]})
    unknown = [e for e in events if e not in WebhookEvent.values]
    if unknown:
        raise ValidationError(
            {
                "events": [
                    f"Unknown event type(s): {', '.join(map(str, unknown))}. "
                    f"Known: {', '.join(WebhookEvent.values)}."
                ]
            }
        )
    return list(dict.fromkeys(events))


# --- Endpoints -------------------------------------------------------------------------


def webhook_secret_new() -> str:
    """`whsec_` + base64 of 32 random bytes, as Standard Webhooks has it."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def webhook_endpoint_create(*, client: User, url: str, events: list[str]) -> WebhookEndpoint:
    """Register `url` for `events` for `client`, with a new secret (the caller shows it
    once). `ValidationError` with field errors when the URL or the events are refused."""
    errors: dict[str, list[str]] = {}
    try:
        webhook_url_addresses(url)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    try:
        events = _events_clean(events)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if WebhookEndpoint.objects.filter(client=client).count() >= MAX_ENDPOINTS_PER_CLIENT:
        errors.setdefault("non_field_errors", []).append(
            f"A client may register at most {MAX_ENDPOINTS_PER_CLIENT} endpoints."
        )
    if errors:
        raise ValidationError(errors)
    endpoint = WebhookEndpoint.objects.create(
        client=client, url=url, events=events, secret=webhook_secret_new()
    )
    logger.info(
        "webhook endpoint %s registered by %s: %s for %s",
        endpoint.pk,
        client.get_username(),
        url,
        ",".join(events),
    )
    return endpoint


def webhook_endpoint_rotate_secret(*, endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """A new secret, in force at once: the next attempt of every pending delivery is
    signed with it (a receiver still on the old one fails it, and the retry succeeds)."""
    endpoint.secret = webhook_secret_new()
    endpoint.save(update_fields=["secret"])
    logger.info("webhook endpoint %s: secret rotated", endpoint.pk)
    return endpoint


def webhook_endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    """Delete the endpoint and its deliveries, stopping the runs still delivering."""
    with transaction.atomic():
        runs = endpoint.deliveries.filter(run__status__in=ACTIVE_RUN_STATUSES).values_list(
            "run_id", flat=True
        )
        for run_id in list(runs):
            try:
                run_cancel(run_id)
            except RunStateError:
                pass  # finished meanwhile
        endpoint.delete()
    logger.info("webhook endpoint %s deleted", endpoint.pk)


def webhook_endpoint_enable(*, endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """Turn a disabled endpoint back on (its receiver was fixed); its failed deliveries
    stay failed until retried (`webhooks_retry --failed`, the admin's action)."""
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        enabled=True, disabled_reason="", consecutive_failures=0
    )
    endpoint.refresh_from_db()
    return endpoint


# --- Events ----------------------------------------------------------------------------


def _link(location: str) -> str:
    """Links are absolute on WEBHOOKS_LINKS_BASE_URL, or paths when it is unset."""
    return settings.WEBHOOKS_LINKS_BASE_URL.rstrip("/") + location


def _order_data(order: Order) -> dict[str, Any]:
    return order_presented(order, link=_link)


def event_id_for(*, order: Order, type: WebhookEvent) -> str:
    """The event's id: the same for the same order and type, whoever emits it, however
    often; different across databases (the order's creation time is part of it)."""
    name = f"{order.pk}/{order.created_at.isoformat()}/{type}"
    return "evt_" + uuid.uuid5(EVENT_ID_NAMESPACE, name).hex


def _order_announces(order: Order, type: WebhookEvent) -> bool:
    """Whether the order is now in the state the event tells of (a cancelled order's
    late `order_review_open`, a refused payment move, tell nothing)."""
    if type == WebhookEvent.CREATED:
        return True
    return type in (
        ORDER_STATUS_EVENTS.get(order.status),
        PAYMENT_STATUS_EVENTS.get(order.payment_status),
    )


# Asked at every event of every order, most often to find none: compiled once.
_enabled_endpoints_of = CompiledRead(WebhookEndpoint, "client_id", where=Q(enabled=True))


def order_event_emit(*, order: Order | None, type: WebhookEvent | None) -> list[WebhookDelivery]:
    """Tell the order's client that `type` happened: a delivery (and its run) for each
    of the client's enabled endpoints subscribed to it, in the caller's transaction.
    Idempotent per (order, type). Never raises: a failure is logged and the order goes
    on. An order without a client, or `type` None, emits nothing."""
    if order is None or type is None or order.client_id is None:
        return []
    try:
        type = WebhookEvent(type)
        endpoints = [
            endpoint
            for endpoint in _enabled_endpoints_of.all(order.client_id)
            if type in endpoint.events
        ]
        # Most clients subscribe to nothing: then no transaction, which on SQLite would
        # take the database's one write lock to write nothing.
        if not endpoints:
            return []
        with transaction.atomic():
            return _deliveries_create(order_pk=order.pk, endpoints=endpoints, type=type)
    except Exception:
        logger.exception("order %s: event %s could not be emitted", order.order_id, type)
        return []


def _deliveries_create(
    *, order_pk: int, endpoints: list[WebhookEndpoint], type: WebhookEvent
) -> list[WebhookDelivery]:
    order = orders_list().get(pk=order_pk)
    if not _order_announces(order, type):
        return []
    event_id = event_id_for(order=order, type=type)
    done = set(
        WebhookDelivery.objects.filter(event_id=event_id, endpoint__in=endpoints).values_list(
            "endpoint_id", flat=True
        )
    )
    todo = [endpoint for endpoint in endpoints if endpoint.pk not in done]
    if not todo:
        return []
    now = timezone.now()
    payload = {
        "id": event_id,
        "type": type.value,
        "timestamp": now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": _order_data(order),
    }
    created = []
    for endpoint in todo:
        try:
            with transaction.atomic():
                delivery = WebhookDelivery.objects.create(
                    endpoint=endpoint,
                    event_id=event_id,
                    event_type=type,
                    order=order,
                    payload=payload,
                    next_attempt_at=now,
                )
                delivery.run = workflow_start(
                    WEBHOOK_DELIVERY_WORKFLOW_ID, {"delivery_id": delivery.pk}
                )
                delivery.save(update_fields=["run"])
        except IntegrityError:
            continue  # a concurrent emit made this one
        created.append(delivery)
    logger.info("order %s: %s to %d endpoint(s)", order.order_id, type, len(created))
    return created


# --- Signing ---------------------------------------------------------------------------


def webhook_body(payload: dict[str, Any]) -> str:
    """The exact text that is signed and sent (ASCII JSON, keys sorted)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def webhook_headers(*, secret: str, event_id: str, body: str, at: datetime) -> dict[str, str]:
    """Standard Webhooks headers: HMAC-SHA256 over `{id}.{timestamp}.{body}` with the
    base64-decoded secret after `whsec_`, as `v1,<base64>`."""
    at = at.astimezone(UTC)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id=event_id, timestamp=at, data=body),
    }


# --- Operators -------------------------------------------------------------------------


def webhook_delivery_retry(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Deliver a failed (or stuck) delivery again, from the first step of a fresh
    schedule, with the same event id. Refused (`WebhookRetryError`) when it was
    delivered, its run is still going, or its endpoint is disabled."""
    delivery = WebhookDelivery.objects.select_related("endpoint", "run").get(pk=delivery.pk)
    if delivery.status == DeliveryStatus.DELIVERED:
        raise WebhookRetryError(f"Delivery {delivery.pk} was delivered already.")
    if delivery.run is not None and delivery.run.status in ACTIVE_RUN_STATUSES:
        raise WebhookRetryError(f"Delivery {delivery.pk} is being delivered.")
    if not delivery.endpoint.enabled:
        raise WebhookRetryError(
            f"Delivery {delivery.pk}: its endpoint is disabled; enable it first."
        )
    with transaction.atomic():
        run = workflow_start(WEBHOOK_DELIVERY_WORKFLOW_ID, {"delivery_id": delivery.pk})
        taken = WebhookDelivery.objects.filter(
            pk=delivery.pk, status=delivery.status, run_id=delivery.run_id
        ).update(status=DeliveryStatus.PENDING, run=run, next_attempt_at=timezone.now())
        if not taken:  # raising rolls the new run back
            raise WebhookRetryError(f"Delivery {delivery.pk} was retried by someone else.")
    logger.info("webhook delivery %s retried as run %s", delivery.pk, run.pk)
    delivery.refresh_from_db()
    return delivery
