"""The `webhook_delivery` workflow: one event to one endpoint, durably.

    attempt/1 → (2xx: delivered) | backoff/1 (sleep) → attempt/2 → ... → settle

Each attempt is a step: it POSTs the signed event and records a `WebhookAttempt` and
the delivery's new state in one transaction. A worker that dies after the POST and
before that commit re-runs the step: the receiver may get the event twice (at least
once), with the same `webhook-id`. A step that finds its delivery already delivered
POSTs nothing (at most once after a 2xx). Long pauses suspend the run; the wait sweep
wakes it. The schedule is read once per run (its first step), so changing
WEBHOOKS_RETRY_SCHEDULE never changes a live run's steps.
"""

import http.client
import io
import logging
import socket
import ssl
import time
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import DateTimeField, F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from pydantic import BaseModel

from orders.metrics import client_webhook_attempt_counted
from workflows import WorkflowContext, workflow

from .models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from .services import (
    WEBHOOK_DELIVERY_WORKFLOW_ID,
    webhook_body,
    webhook_headers,
    webhook_url_addresses,
)

logger = logging.getLogger(__name__)

RESPONSE_HEAD_BYTES = 500
USER_AGENT = "polos-webhooks/1"


class DeliveryInput(BaseModel):
    delivery_id: int


class AttemptResult(BaseModel):
    # failed: try again after the pause; done: nothing more to try (delivered before,
    # deleted, or its endpoint was disabled)
    outcome: Literal["delivered", "failed", "done"]
    status_code: int | None = None


class DeliveryResult(BaseModel):
    delivery_id: int
    status: str
    attempts: int


class Answer(BaseModel):
    status_code: int | None = None
    latency_ms: int | None = None
    head: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


# --- HTTP, to a checked address only --------------------------------------------------

# The status line, the headers and the head of the body kept: a receiver may not make
# an attempt read more (http.client alone allows 100 headers of 64 KiB).
RESPONSE_MAX_BYTES = 64 * 1024


class _AnswerTooLargeError(http.client.HTTPException):
    pass


class _Deadline:
    """What is left of an attempt's time: socket timeouts apply per operation, so a
    receiver that answers one header line at a time would never meet them."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._at = time.monotonic() + seconds

    def left(self) -> float:
        left = self._at - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete answer within {self.seconds:g} s")
        return left


class _BoundedReader(io.RawIOBase):
    """The response's bytes: each read waits at most what is left of the deadline, and
    no more than RESPONSE_MAX_BYTES are read in all."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)  # keeps the socket open while read
        self._deadline = deadline
        self._left = RESPONSE_MAX_BYTES

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            raise _AnswerTooLargeError(f"the answer's head is over {RESPONSE_MAX_BYTES} bytes")
        self._sock.settimeout(self._deadline.left())
        with memoryview(buffer) as view:
            read = self._raw.readinto(view[: self._left]) or 0
        self._left -= read
        return read

    def close(self) -> None:
        self._raw.close()
        super().close()


class _BoundedSocket:
    """The connection's socket as http.client uses it (`sendall`, `makefile`, `close`),
    every operation bounded by the attempt's deadline."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: bytes) -> None:
        with memoryview(data) as view:
            sent = 0
            while sent < len(view):
                self._sock.settimeout(self._deadline.left())
                sent += self._sock.send(view[sent:])

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_BoundedReader(self._sock, self._deadline))

    def close(self) -> None:
        self._sock.close()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to `address` (checked) while speaking to `host` (Host header); the
    whole exchange (connect, send, read) ends by `deadline`."""

    def __init__(self, host: str, port: int | None, *, address: str, deadline: _Deadline) -> None:
        super().__init__(host, port, timeout=deadline.seconds)
        self._address = address
        self._deadline = deadline

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self._deadline.left())
        try:
            sock = self._secured(sock)
        except BaseException:
            sock.close()
            raise
        self.sock = _BoundedSocket(sock, self._deadline)

    def _secured(self, sock: socket.socket) -> socket.socket:
        return sock


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """Connects to `address` (checked); TLS (SNI, certificate) for `host`."""

    default_port = http.client.HTTPS_PORT

    def _secured(self, sock: socket.socket) -> socket.socket:
        sock.settimeout(self._deadline.left())  # the handshake as a whole (CPython's ssl)
        return ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)


def webhook_post(*, url: str, body: str, headers: dict[str, str]) -> Answer:
    """POST `body` to `url` after checking its addresses again (DNS rebinding), without
    following redirects, within WEBHOOKS_TIMEOUT_SECONDS for the whole exchange and
    reading at most RESPONSE_MAX_BYTES of the answer. Never raises: what went wrong is
    the answer's `error`."""
    started = time.monotonic()
    try:
        addresses = webhook_url_addresses(url)
    except ValidationError as exc:
        return Answer(error="; ".join(exc.message_dict.get("url", [str(exc)])))
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    https = parts.scheme.lower() == "https"
    connection_class = _PinnedHTTPSConnection if https else _PinnedHTTPConnection
    deadline = _Deadline(settings.WEBHOOKS_TIMEOUT_SECONDS)
    connection = connection_class(
        parts.hostname or "", parts.port, address=addresses[0], deadline=deadline
    )
    try:
        connection.request(
            "POST",
            path,
            body=body.encode(),
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
        )
        response = connection.getresponse()
        head = response.read(RESPONSE_HEAD_BYTES)
        return Answer(
            status_code=response.status,
            latency_ms=round((time.monotonic() - started) * 1000),
            head=head.decode(errors="replace"),
        )
    except TimeoutError:  # the deadline, or a socket operation that met it
        return Answer(
            latency_ms=round((time.monotonic() - started) * 1000),
            error=f"TimeoutError: no complete answer within {deadline.seconds:g} s",
        )
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Answer(
            latency_ms=round((time.monotonic() - started) * 1000),
            error=f"{type(exc).__name__}: {exc}"[:1000],
        )
    finally:
        connection.close()


# --- Steps -----------------------------------------------------------------------------


def retry_schedule() -> list[float]:
    return [float(seconds) for seconds in settings.WEBHOOKS_RETRY_SCHEDULE]


def webhook_attempt(*, delivery_id: int, pause: float | None) -> AttemptResult:
    """One POST of the delivery, recorded. `pause`: seconds until the next attempt
    (None: this is the last one)."""
    delivery = WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_id).first()
    if delivery is None:
        return AttemptResult(outcome="done")  # its endpoint was deleted
    if delivery.status == DeliveryStatus.DELIVERED:
        return AttemptResult(outcome="delivered")  # a re-run after the 2xx was recorded
    endpoint = delivery.endpoint
    if not endpoint.enabled:
        WebhookDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.PENDING).update(
            status=DeliveryStatus.FAILED, next_attempt_at=None
        )
        return AttemptResult(outcome="done")
    body = webhook_body(delivery.payload)
    headers = webhook_headers(
        secret=endpoint.secret, event_id=delivery.event_id, body=body, at=timezone.now()
    )
    answer = webhook_post(url=endpoint.url, body=body, headers=headers)
    now = timezone.now()
    with transaction.atomic():
        changes: dict[str, object] = {
            "attempts": F("attempts") + 1,
            "last_attempt_at": now,
            "next_attempt_at": None
            if answer.ok or pause is None
            else now + timedelta(seconds=pause),
        }
        if answer.ok:
            changes["status"] = DeliveryStatus.DELIVERED
        if not WebhookDelivery.objects.filter(pk=delivery.pk).update(**changes):
            return AttemptResult(outcome="done")
        number = WebhookDelivery.objects.values_list("attempts", flat=True).get(pk=delivery.pk)
        WebhookAttempt.objects.create(
            delivery_id=delivery.pk,
            number=number,
            status_code=answer.status_code,
            latency_ms=answer.latency_ms,
            response_head=answer.head,
            error=answer.error,
            at=now,
        )
        endpoint_attempt_record(endpoint_id=endpoint.pk, answer=answer, at=now)
    client_webhook_attempt_counted(event_type=delivery.event_type, delivered=answer.ok)
    logger.info(
        "webhook %s %s to endpoint %s, attempt %d: %s",
        delivery.event_type,
        delivery.event_id,
        endpoint.pk,
        number,
        answer.status_code or answer.error,
    )
    return AttemptResult(
        outcome="delivered" if answer.ok else "failed", status_code=answer.status_code
    )


def answer_text(answer: Answer) -> str:
    """What an attempt got, as the admin shows it: `HTTP 503`, or why there was no answer."""
    if answer.status_code is not None:
        return f"HTTP {answer.status_code}"
    return (answer.error or "no answer")[:255]


def endpoint_attempt_record(*, endpoint_id: int, answer: Answer, at: datetime) -> None:
    """The endpoint's health after one attempt, in the attempt's transaction. A 2xx
    clears it (and the deliveries-in-a-row count); a failure counts at once, whichever
    delivery or retry it belongs to. Before this, only a delivery whose whole schedule
    (about a day) was spent counted, so a failing receiver showed 0 failures all day."""
    endpoints = WebhookEndpoint.objects.filter(pk=endpoint_id)
    if answer.ok:
        endpoints.update(
            last_attempt_at=at,
            last_status=answer_text(answer),
            failing_since=None,
            failed_attempts=0,
            consecutive_failures=0,
        )
        return
    endpoints.update(
        last_attempt_at=at,
        last_status=answer_text(answer),
        failing_since=Coalesce(F("failing_since"), Value(at, output_field=DateTimeField())),
        failed_attempts=F("failed_attempts") + 1,
    )


def webhook_delivery_settle(*, delivery_id: int) -> DeliveryResult:
    """After the last attempt: a delivery still pending is failed, and counts against its
    endpoint, which is disabled after WEBHOOKS_DISABLE_AFTER failures in a row."""
    delivery = WebhookDelivery.objects.filter(pk=delivery_id).first()
    if delivery is None:
        return DeliveryResult(delivery_id=delivery_id, status="deleted", attempts=0)
    with transaction.atomic():
        failed = WebhookDelivery.objects.filter(
            pk=delivery.pk, status=DeliveryStatus.PENDING
        ).update(status=DeliveryStatus.FAILED, next_attempt_at=None)
        if failed:
            _endpoint_failure_count(endpoint_id=delivery.endpoint_id, event_id=delivery.event_id)
    delivery.refresh_from_db()
    return DeliveryResult(
        delivery_id=delivery.pk, status=delivery.status, attempts=delivery.attempts
    )


def _endpoint_failure_count(*, endpoint_id: int, event_id: str) -> None:
    WebhookEndpoint.objects.filter(pk=endpoint_id).update(
        consecutive_failures=F("consecutive_failures") + 1
    )
    limit = settings.WEBHOOKS_DISABLE_AFTER
    disabled = WebhookEndpoint.objects.filter(
        pk=endpoint_id, enabled=True, consecutive_failures__gte=limit
    ).update(
        enabled=False,
        disabled_reason=(
            f"Disabled {timezone.now():%Y-%m-%d %H:%M} UTC: {limit} deliveries in a row "
            f"failed (the last: {event_id}). Fix the receiver, enable the endpoint, then "
            "retry its failed deliveries."
        )[:255],
    )
    if disabled:
        logger.warning(
            "webhook endpoint %s disabled after %d failed deliveries", endpoint_id, limit
        )


# --- The workflow ----------------------------------------------------------------------


@workflow(
    id=WEBHOOK_DELIVERY_WORKFLOW_ID,
    description="POST one signed order event to one client endpoint until it answers 2xx.",
)
async def webhook_delivery(ctx: WorkflowContext, payload: DeliveryInput) -> DeliveryResult:
    schedule = await ctx.step.run("schedule", retry_schedule)
    for number in range(1, len(schedule) + 2):
        pause = schedule[number - 1] if number <= len(schedule) else None
        result = await ctx.step.run(
            f"attempt/{number}", webhook_attempt, delivery_id=payload.delivery_id, pause=pause
        )
        if result.outcome != "failed" or pause is None:
            break
        await ctx.step.sleep(f"backoff/{number}", pause)
    return await ctx.step.run("settle", webhook_delivery_settle, delivery_id=payload.delivery_id)
