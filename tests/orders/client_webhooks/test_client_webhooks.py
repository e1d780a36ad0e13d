"""Signed order-status webhooks to the intake clients: the endpoints API and its URL
rules, each event reaching a real local HTTP receiver with a signature that the README's
verification snippet accepts, retries with backoff, isolation between clients, and a
worker SIGKILLed mid-delivery (a real qcluster)."""

import base64
import re
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from orders.client_webhooks import services as client_webhooks
from orders.client_webhooks.delivery import webhook_post
from orders.client_webhooks.models import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from orders.client_webhooks.services import (
    order_event_emit,
    webhook_endpoint_create,
    webhook_headers,
)
from orders.models import Order, PaymentStatus
from orders.schemas import OrderPayload
from orders.services.cancellation import order_cancel
from orders.services.intake import order_create
from orders.services.payments import order_payment_status_set
from orders.services.reviews import review_decide
from tests.support.api import api_client_for
from tests.support.cluster import QCluster, wait_until
from tests.support.webhook_receiver import WebhookReceiver
from workflows.engine.services import runs_reap, waits_expire
from workflows.models import RunStatus, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)

README = Path(__file__).resolve().parents[3] / "README.md"
WEBHOOKS = "/api/webhooks/"
ALL_EVENTS = list(WebhookEvent.values)


def documented_verify():
    """The receiver's `verify` exactly as the README documents it."""
    text = README.read_text()
    snippet = re.search(r"<!-- webhook-verify -->\n```python\n(.*?)```", text, re.S).group(1)
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)
    return namespace["verify"], namespace["WebhookVerificationError"]


@pytest.fixture(autouse=True)
def webhook_settings(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    settings.WEBHOOKS_ALLOW_HTTP = True
    settings.WEBHOOKS_RETRY_SCHEDULE = [0.01, 0.01]
    return settings


@pytest.fixture(scope="module")
def receiver_session():
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def receiver(receiver_session):
    receiver_session.reset()
    return receiver_session


@pytest.fixture
def other_receiver():
    with WebhookReceiver() as receiver:
        yield receiver


def place(client: User | None, amount: str, order_id: str, customer: str = "cus_good") -> Order:
    order, _ = order_create(
        client=client,
        payload=OrderPayload(
            order_id=order_id,
            customer_id=customer,
            customer_email="ada@example.com",
            amount=Decimal(amount),
        ),
    )
    return order


def run_status(run_id: Any) -> str:
    return WorkflowRun.objects.get(pk=run_id).status


def order_state(order: Order) -> tuple[str, str]:
    order.refresh_from_db()
    return order.status, run_status(order.run_id)


def events_of(receiver: WebhookReceiver, secret: str) -> list[dict[str, Any]]:
    """Every request the receiver got, verified with the README's snippet."""
    verify, _ = documented_verify()
    return [verify(secret, r.body, r.headers) for r in receiver.received]


# --- the endpoints API ------------------------------------------------------------------


def test_register_list_rotate_delete(intake, receiver):
    api = api_client_for(intake)
    created = api.post(WEBHOOKS, {"url": receiver.url, "events": ["order.completed"]})
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["url"] == receiver.url and body["events"] == ["order.completed"]
    assert body["enabled"] is True and created["Cache-Control"] == "no-store"
    secret = body["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32

    listed = api.get(WEBHOOKS).json()
    assert [e["id"] for e in listed] == [body["id"]] and "secret" not in listed[0]

    rotated = api.post(f"{WEBHOOKS}{body['id']}/rotate-secret/").json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != secret
    assert WebhookEndpoint.objects.get().secret == rotated["secret"]

    assert api.delete(f"{WEBHOOKS}{body['id']}/").status_code == 204
    assert api.get(WEBHOOKS).json() == []
    assert api.delete(f"{WEBHOOKS}{body['id']}/").status_code == 404
    assert api.delete(f"{WEBHOOKS}not-a-number/").status_code == 404


def test_unknown_or_missing_events_are_field_errors(intake, receiver):
    api = api_client_for(intake)
    answer = api.post(WEBHOOKS, {"url": receiver.url, "events": ["order.shipped"]})
    assert answer.status_code == 400 and "order.shipped" in answer.json()["events"][0]
    assert api.post(WEBHOOKS, {"url": receiver.url, "events": []}).status_code == 400
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hooks",
        "https://localhost/hooks",
        "https://10.1.2.3/hooks",
        "https://192.168.0.10/hooks",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hooks",
        "https://[::ffff:127.0.0.1]/hooks",
        "https://0.0.0.0/hooks",
        "https://224.0.0.1/hooks",
        "https://240.0.0.1/hooks",
    ],
)
def test_private_addresses_are_refused_unless_allowed(intake, webhook_settings, url):
    webhook_settings.WEBHOOKS_ALLOW_PRIVATE = False
    api = api_client_for(intake)
    refused = api.post(WEBHOOKS, {"url": url, "events": ALL_EVENTS})
    assert refused.status_code == 400, refused.json()
    [error] = refused.json()["url"]
    # A newcomer's dead end otherwise: the error names the setting that allows it.
    assert "not a public address" in error and "WEBHOOKS_ALLOW_PRIVATE=1" in error
    assert not WebhookEndpoint.objects.exists()

    webhook_settings.WEBHOOKS_ALLOW_PRIVATE = True
    assert api.post(WEBHOOKS, {"url": url, "events": ALL_EVENTS}).status_code == 201


def test_http_is_refused_unless_allowed_and_credentials_always(intake, webhook_settings):
    webhook_settings.WEBHOOKS_ALLOW_HTTP = False
    api = api_client_for(intake)
    answer = api.post(WEBHOOKS, {"url": "http://127.0.0.1:9/hooks", "events": ALL_EVENTS})
    assert answer.status_code == 400
    [error] = answer.json()["url"]
    assert error.startswith("The URL must use https") and "WEBHOOKS_ALLOW_HTTP=1" in error
    answer = api.post(WEBHOOKS, {"url": "https://u:p@127.0.0.1/hooks", "events": ALL_EVENTS})
    assert answer.status_code == 400 and "credentials" in answer.json()["url"][0]
    ftp = api.post(WEBHOOKS, {"url": "ftp://example.com/", "events": ALL_EVENTS})
    assert ftp.status_code == 400
    webhook_settings.WEBHOOKS_ALLOW_HTTP = True
    ok = api.post(WEBHOOKS, {"url": "http://127.0.0.1:9/hooks", "events": ALL_EVENTS})
    assert ok.status_code == 201


def test_an_address_refused_at_delivery_time_is_not_contacted(
    intake, receiver, webhook_settings, queue_capture
):
    """DNS rebinding: the check runs again before every attempt."""
    endpoint = webhook_endpoint_create(client=intake, url=receiver.url, events=["order.created"])
    webhook_settings.WEBHOOKS_ALLOW_PRIVATE = False
    place(intake, "250.00", "ord-rebind")
    queue_capture.drain()
    assert receiver.received == []
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 3
    errors = set(delivery.attempt_records.values_list("error", flat=True))
    assert len(errors) == 1 and "not a public address" in errors.pop()


def test_another_clients_endpoint_is_a_404(intake, receiver):
    other = User.objects.create_user("other", password="other-pass-123")
    endpoint = webhook_endpoint_create(client=intake, url=receiver.url, events=ALL_EVENTS)
    api = api_client_for(other)
    assert api.get(WEBHOOKS).json() == []
    assert api.post(f"{WEBHOOKS}{endpoint.pk}/rotate-secret/").status_code == 404
    assert api.delete(f"{WEBHOOKS}{endpoint.pk}/").status_code == 404
    assert WebhookEndpoint.objects.get().secret == endpoint.secret


# --- events -----------------------------------------------------------------------------


def test_each_event_type_reaches_the_receiver_with_a_valid_signature(
    intake, receiver, queue_capture, reviewer
):
    endpoint = webhook_endpoint_create(client=intake, url=receiver.url, events=ALL_EVENTS)
    small = place(intake, "250.00", "ord-small")  # created, completed
    declined = place(intake, "250.00", "ord-declined", customer="cus_declined")  # failed
    approved = place(intake, "2500.00", "ord-approved")  # awaiting_review, completed
    rejected = place(intake, "2500.00", "ord-rejected")  # awaiting_review, rejected
    cancelled = place(intake, "2500.00", "ord-cancelled")  # awaiting_review, canceled
    queue_capture.drain(limit=200)
    review_decide(order=approved, approved=True, by=reviewer)
    review_decide(order=rejected, approved=False, by=reviewer)
    order_cancel(order=cancelled)
    queue_capture.drain(limit=200)
    # What Stripe's webhooks report (`order_payment_status_set` is their door).
    order_payment_status_set(order=small, status=PaymentStatus.REFUNDED, reason="evt_1")
    order_payment_status_set(order=approved, status=PaymentStatus.DISPUTED, reason="evt_2")
    queue_capture.drain(limit=200)

    events = events_of(receiver, endpoint.secret)
    assert {e["type"] for e in events} == set(ALL_EVENTS)
    seen = {(e["data"]["order_id"], e["type"]) for e in events}
    assert seen == {
        ("ord-small", "order.created"),
        ("ord-small", "order.completed"),
        ("ord-small", "order.refunded"),
        ("ord-declined", "order.created"),
        ("ord-declined", "order.failed"),
        ("ord-approved", "order.created"),
        ("ord-approved", "order.awaiting_review"),
        ("ord-approved", "order.completed"),
        ("ord-approved", "order.disputed"),
        ("ord-rejected", "order.created"),
        ("ord-rejected", "order.awaiting_review"),
        ("ord-rejected", "order.rejected"),
        ("ord-cancelled", "order.created"),
        ("ord-cancelled", "order.awaiting_review"),
        ("ord-cancelled", "order.canceled"),
    }
    assert len(events) == len(seen)  # each once
    for request, event in zip(receiver.received, events, strict=True):
        assert request.headers["webhook-id"] == event["id"] and event["id"].startswith("evt_")
        assert request.headers["content-type"] == "application/json"
    completed = next(e for e in events if e["type"] == "order.completed")
    assert completed["data"]["status"] == "completed"
    assert completed["data"]["links"]["self"] == f"/api/orders/{completed['data']['order_id']}/"
    refunded = next(e for e in events if e["type"] == "order.refunded")
    assert refunded["data"]["payment_status"] == "refunded"
    assert Order.objects.get(pk=declined.pk).status == "failed"
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"delivered"}
    assert WebhookAttempt.objects.count() == len(events)


def test_only_subscribed_types_and_absolute_links_from_the_setting(
    intake, receiver, queue_capture, webhook_settings
):
    webhook_settings.WEBHOOKS_LINKS_BASE_URL = "https://orders.example.com/"
    endpoint = webhook_endpoint_create(client=intake, url=receiver.url, events=["order.completed"])
    place(intake, "250.00", "ord-1")
    queue_capture.drain()
    [event] = events_of(receiver, endpoint.secret)
    assert event["type"] == "order.completed"
    assert event["data"]["links"]["self"] == "https://orders.example.com/api/orders/ord-1/"


def test_emitting_again_is_idempotent_per_order_and_type(intake, receiver, queue_capture):
    webhook_endpoint_create(client=intake, url=receiver.url, events=ALL_EVENTS)
    order = place(intake, "250.00", "ord-1")
    queue_capture.drain()
    before = WebhookDelivery.objects.count()
    # A retried or replayed step emits again: nothing new.
    assert order_event_emit(order=order, type=WebhookEvent.COMPLETED) == []
    assert order_event_emit(order=order, type=WebhookEvent.CREATED) == []
    # An event the order's state does not bear out is not emitted at all.
    assert order_event_emit(order=order, type=WebhookEvent.REJECTED) == []
    assert WebhookDelivery.objects.count() == before == 2
    queue_capture.drain()
    assert len(receiver.received) == 2


def test_another_clients_endpoint_and_clientless_orders_get_nothing(
    intake, receiver, other_receiver, queue_capture
):
    other = User.objects.create_user("other", password="other-pass-123")
    mine = webhook_endpoint_create(client=intake, url=receiver.url, events=ALL_EVENTS)
    webhook_endpoint_create(client=other, url=other_receiver.url, events=ALL_EVENTS)
    place(intake, "250.00", "ord-1")
    place(None, "250.00", "ord-console")  # no client: no events
    queue_capture.drain()
    assert {e["data"]["order_id"] for e in events_of(receiver, mine.secret)} == {"ord-1"}
    assert other_receiver.received == []
    assert not WebhookDelivery.objects.filter(endpoint__client=other).exists()


def test_an_event_nobody_subscribes_to_writes_nothing_and_locks_nothing(
    intake, receiver, queue_capture
):
    """Most orders' events find no endpoint: then no transaction, which on SQLite would
    take the database's one write lock, that every worker waits for, to write nothing."""
    webhook_endpoint_create(client=intake, url=receiver.url, events=["order.completed"])
    order = place(intake, "250.00", "ord-1")  # its order.created: not subscribed
    assert not WebhookDelivery.objects.exists()
    with CaptureQueriesContext(connection) as queries:
        assert order_event_emit(order=order, type=WebhookEvent.REJECTED) == []
    statements = [q["sql"].split()[0].upper() for q in queries.captured_queries]
    assert statements == ["SELECT"]  # the client's endpoints; no BEGIN, no write


def test_a_failing_emit_never_fails_the_order(intake, receiver, queue_capture, monkeypatch):
    webhook_endpoint_create(client=intake, url=receiver.url, events=ALL_EVENTS)

    def broken(order):
        raise RuntimeError("rendering broke")

    monkeypatch.setattr(client_webhooks, "_order_data", broken)
    order = place(intake, "250.00", "ord-1")
    assert queue_capture.drain() == ["completed"]
    order.refresh_from_db()
    assert order.status == "completed" and not WebhookDelivery.objects.exists()


# --- delivery: retries, failures, operators -------------------------------------------------


def test_500_twice_then_200_delivers_three_times_and_the_order_is_unaffected(
    intake, receiver, queue_capture, webhook_settings, client
):
    from tests.workflows.test_metrics import TOKEN, scrape

    webhook_settings.METRICS_TOKEN = TOKEN
    before = scrape(client)
    # Pauses longer than the engine's inline sleeps: the run suspends, the sweep wakes it.
    webhook_settings.WEBHOOKS_RETRY_SCHEDULE = [60, 600, 3600]
    endpoint = webhook_endpoint_create(client=intake, url=receiver.url, events=["order.completed"])
    receiver.answer(500, 500)
    order = place(intake, "250.00", "ord-1")
    queue_capture.drain()
    assert order_state(order) == ("completed", RunStatus.COMPLETED)
    delivery = WebhookDelivery.objects.get()
    assert len(receiver.received) == 1 and delivery.status == DeliveryStatus.PENDING
    assert run_status(delivery.run_id) == RunStatus.SUSPENDED
    left = delivery.next_attempt_at - timezone.now()
    assert timedelta(seconds=55) < left <= timedelta(seconds=60)

    for wake_after in (61, 601):
        waits_expire(now=timezone.now() + timedelta(seconds=wake_after))
        queue_capture.drain()

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED and delivery.attempts == 3
    assert run_status(delivery.run_id) == RunStatus.COMPLETED
    assert delivery.next_attempt_at is None
    assert [r.status for r in receiver.received] == [500, 500, 200]
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    events = events_of(receiver, endpoint.secret)
    assert all(e == events[0] for e in events)
    attempts = list(delivery.attempt_records.values_list("number", "status_code", "response_head"))
    assert attempts == [
        (1, 500, "answered 500"),
        (2, 500, "answered 500"),
        (3, 200, "answered 200"),
    ]
    assert delivery.attempt_records.filter(latency_ms__isnull=False).count() == 3
    assert order_state(order) == ("completed", RunStatus.COMPLETED)
    after = scrape(client)  # the operations metrics count the attempts
    for outcome, count in (("delivered", 1), ("failed", 2)):
        labels = {"event_type": "order.completed", "outcome": outcome}
        name = "orders_client_webhook_attempts_total"
        assert after.value(name, **labels) - before.value(name, **labels) == count


def test_endpoint_failing_in_a_row_is_disabled_and_retry_delivers(
    intake, receiver, queue_capture, webhook_settings
):
    webhook_settings.WEBHOOKS_DISABLE_AFTER = 2
    webhook_settings.WEBHOOKS_RETRY_SCHEDULE = [0.01]  # two attempts per delivery
    endpoint = webhook_endpoint_create(client=intake, url=receiver.url, events=["order.created"])
    receiver.answer(*[503] * 4)
    place(intake, "250.00", "ord-1")
    place(intake, "250.00", "ord-2")
    queue_capture.drain()
    endpoint.refresh_from_db()
    assert not endpoint.enabled and "2 deliveries in a row failed" in endpoint.disabled_reason
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"failed"}
    assert len(receiver.received) == 4

    place(intake, "250.00", "ord-3")  # a disabled endpoint gets no new deliveries
    queue_capture.drain()
    assert WebhookDelivery.objects.count() == 2

    with pytest.raises(Exception, match="disabled"):
        call_command("webhooks_retry", str(WebhookDelivery.objects.first().pk))
    client_webhooks.webhook_endpoint_enable(endpoint=endpoint)
    call_command("webhooks_retry", "--failed")
    queue_capture.drain()
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"delivered"}
    assert len(receiver.received) == 6
    endpoint.refresh_from_db()
    assert endpoint.consecutive_failures == 0
    with pytest.raises(Exception, match="delivered already"):
        call_command("webhooks_retry", str(WebhookDelivery.objects.first().pk))


def test_deleting_an_endpoint_stops_its_pending_deliveries(
    intake, receiver, queue_capture, webhook_settings
):
    webhook_settings.WEBHOOKS_RETRY_SCHEDULE = [60]
    endpoint = webhook_endpoint_create(client=intake, url=receiver.url, events=["order.created"])
    receiver.answer(500)
    place(intake, "250.00", "ord-1")
    queue_capture.drain()
    run_id = WebhookDelivery.objects.get().run_id
    client_webhooks.webhook_endpoint_delete(endpoint=endpoint)
    assert run_status(run_id) == RunStatus.CANCELLED and not WebhookDelivery.objects.exists()
    waits_expire(now=timezone.now() + timedelta(seconds=61))
    queue_capture.drain()
    assert len(receiver.received) == 1


# --- the receiver does not choose how long an attempt lasts ---------------------------------


def test_a_receiver_dripping_its_answer_is_cut_off_at_the_deadline(receiver, webhook_settings):
    # 200 OK, then one header line every 0.3 s: no socket operation ever waits a whole
    # second, and the whole answer would take 9 s.
    webhook_settings.WEBHOOKS_TIMEOUT_SECONDS = 1.0
    receiver.drip = 0.3
    receiver.extra_headers = [("X-Drip", str(n)) for n in range(30)]
    started = time.monotonic()
    answer = webhook_post(url=receiver.url, body="{}", headers={})
    took = time.monotonic() - started
    assert 1.0 <= took < 1.8, took
    assert answer.status_code is None and not answer.ok
    assert answer.error == "TimeoutError: no complete answer within 1 s"
    assert len(receiver.received) == 1  # the request itself went through


def test_a_dripped_answer_is_recorded_as_a_timed_out_attempt_and_retried(
    intake, receiver, queue_capture, webhook_settings
):
    webhook_settings.WEBHOOKS_TIMEOUT_SECONDS = 1.0
    webhook_settings.WEBHOOKS_RETRY_SCHEDULE = [60]
    receiver.drip = 0.3
    receiver.extra_headers = [("X-Drip", str(n)) for n in range(30)]
    webhook_endpoint_create(client=intake, url=receiver.url, events=["order.created"])
    place(intake, "250.00", "ord-1")
    queue_capture.drain()
    delivery = WebhookDelivery.objects.get()
    [attempt] = delivery.attempt_records.all()
    assert attempt.status_code is None and "no complete answer within 1 s" in attempt.error
    assert 1000 <= attempt.latency_ms < 1800
    assert delivery.status == DeliveryStatus.PENDING and delivery.next_attempt_at is not None

    receiver.drip = 0  # the receiver is fixed: the next attempt delivers
    waits_expire(now=timezone.now() + timedelta(seconds=61))
    queue_capture.drain()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED and delivery.attempts == 2


def test_an_answer_with_an_oversized_head_is_refused_unread(receiver, webhook_settings):
    # 60 headers of 2 KB: within http.client's own limits (100 headers, 64 KiB a line).
    receiver.extra_headers = [(f"X-Pad-{n}", "x" * 2000) for n in range(60)]
    answer = webhook_post(url=receiver.url, body="{}", headers={})
    assert answer.status_code is None and not answer.ok
    assert answer.error == f"_AnswerTooLargeError: the answer's head is over {64 * 1024} bytes"
    receiver.extra_headers = [(f"X-Pad-{n}", "x" * 2000) for n in range(20)]
    assert webhook_post(url=receiver.url, body="{}", headers={}).status_code == 200


# --- signatures --------------------------------------------------------------------------


def test_forged_altered_or_expired_signatures_fail_the_documented_check(
    intake, receiver, queue_capture
):
    verify, VerificationError = documented_verify()
    endpoint = webhook_endpoint_create(client=intake, url=receiver.url, events=["order.created"])
    place(intake, "250.00", "ord-1")
    queue_capture.drain()
    [request] = receiver.received
    assert verify(endpoint.secret, request.body, request.headers)["type"] == "order.created"

    with pytest.raises(VerificationError):  # altered body
        verify(endpoint.secret, request.body.replace(b"ord-1", b"ord-2"), request.headers)
    forged = webhook_headers(
        secret=client_webhooks.webhook_secret_new(),
        event_id=request.headers["webhook-id"],
        body=request.body.decode(),
        at=timezone.now(),
    )
    with pytest.raises(VerificationError):  # signed with another secret
        verify(endpoint.secret, request.body, forged)
    expired = webhook_headers(
        secret=endpoint.secret,
        event_id=request.headers["webhook-id"],
        body=request.body.decode(),
        at=timezone.now() - timedelta(minutes=10),
    )
    with pytest.raises(VerificationError):  # correctly signed, but 10 minutes old
        verify(endpoint.secret, request.body, expired)
    replayed_id = {**request.headers, "webhook-id": "evt_other"}
    with pytest.raises(VerificationError):  # the id is signed too
        verify(endpoint.secret, request.body, replayed_id)


# --- a worker killed mid-delivery (real qcluster) -------------------------------------


@pytest.mark.qcluster
def test_a_worker_killed_mid_delivery_loses_no_event(intake, receiver, webhook_settings):
    webhook_settings.WEBHOOKS_RETRY_SCHEDULE = [1]
    endpoint = webhook_endpoint_create(client=intake, url=receiver.url, events=["order.created"])
    env = {
        "WORKFLOWS_LEASE_SECONDS": "2",
        "WEBHOOKS_ALLOW_PRIVATE": "1",
        "WEBHOOKS_ALLOW_HTTP": "1",
        "WEBHOOKS_RETRY_SCHEDULE": "1",
        "LLM_PROVIDER": "simulated",
        "PAYMENT_GATEWAY": "simulated",
    }
    receiver.delay = 30  # the receiver holds its answer: the worker dies mid-POST
    place(intake, "250.00", "ord-1")
    delivery = WebhookDelivery.objects.get()
    first = QCluster(env=env).start()
    try:
        wait_until(lambda: len(receiver.received) == 1, timeout=60)
        first.kill()
    finally:
        first.kill()
        print(first.output()[-3000:])
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING and delivery.attempts == 0
    assert WorkflowRun.objects.get(pk=delivery.run_id).status == RunStatus.RUNNING

    receiver.delay = 0
    reaped: list[Any] = []
    wait_until(lambda: reaped.extend(runs_reap()) or delivery.run_id in reaped, timeout=15)
    with QCluster(env=env) as second:
        try:
            wait_until(
                lambda: WebhookDelivery.objects.filter(
                    pk=delivery.pk, status=DeliveryStatus.DELIVERED
                ).exists(),
                timeout=60,
            )
        finally:
            print(second.output()[-3000:])
    delivery.refresh_from_db()
    # At least once: the receiver saw the event twice, under one webhook-id to dedupe on.
    assert len(receiver.received) == 2
    assert {r.headers["webhook-id"] for r in receiver.received} == {delivery.event_id}
    assert [e["type"] for e in events_of(receiver, endpoint.secret)] == ["order.created"] * 2
    # The attempt the dead worker made was never recorded; the one that succeeded was.
    assert list(delivery.attempt_records.values_list("number", "status_code")) == [(1, 200)]
    wait_until(
        lambda: WorkflowRun.objects.get(pk=delivery.run_id).status == RunStatus.COMPLETED,
        timeout=30,
    )


# --- admin --------------------------------------------------------------------------------


def test_admin_adds_an_endpoint_shows_its_secret_once_and_retries_deliveries(
    admin_client, intake, receiver, queue_capture, webhook_settings
):
    add = "/admin/client_webhooks/webhookendpoint/add/"
    assert admin_client.get(add).status_code == 200
    page = admin_client.post(
        add, {"client": intake.pk, "url": receiver.url, "events": ["order.created"]}
    )
    endpoint = WebhookEndpoint.objects.get()
    assert page.status_code == 200 and endpoint.secret in page.content.decode()
    change = admin_client.get(f"/admin/client_webhooks/webhookendpoint/{endpoint.pk}/change/")
    assert endpoint.secret not in change.content.decode()
    listing = admin_client.get("/admin/client_webhooks/webhookendpoint/").content.decode()
    assert "enabled" in listing and endpoint.secret not in listing

    webhook_settings.WEBHOOKS_RETRY_SCHEDULE = []  # one attempt
    receiver.answer(500)
    place(intake, "250.00", "ord-1")
    queue_capture.drain()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED
    detail = admin_client.get(f"/admin/client_webhooks/webhookdelivery/{delivery.pk}/change/")
    assert "answered 500" in detail.content.decode()
    admin_client.post(
        "/admin/client_webhooks/webhookdelivery/",
        {"action": "retry_selected", "_selected_action": [delivery.pk]},
    )
    queue_capture.drain()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED and delivery.attempts == 2


def test_an_events_data_is_the_order_exactly_as_the_api_shows_it(
    intake, queue_capture, webhook_settings, reviewer
):
    """One presenter renders both: the API's order body and an event's `data`."""
    webhook_settings.WEBHOOKS_LINKS_BASE_URL = "http://testserver"
    api = api_client_for(intake)
    order = place(intake, "2500.00", "ord-big")
    queue_capture.drain(limit=200)
    for _ in range(2):  # awaiting review, then decided and completed
        order = Order.objects.get(pk=order.pk)
        body = api.get(f"/api/orders/{order.order_id}/").json()
        assert body["review"] is not None and body["run_id"] == str(order.run_id)
        assert client_webhooks._order_data(order) == body
        if order.status == "awaiting_review":
            review_decide(order=order, approved=True, by=reviewer)
            queue_capture.drain(limit=200)
    assert body["status"] == "completed" and body["review"]["decided_by"] == "rita"
