"""An endpoint's health in the webhook admin (issue 21, item 5): its last answer, since
when it fails, and its failed attempts counted across deliveries and retries, from the
first failed attempt (a delivery used to count only once its whole schedule, about a
day, was spent, so a failing receiver showed "enabled, 0 consecutive failures"); and
its recent deliveries on its page, bounded."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from orders.client_webhooks.models import WebhookDelivery, WebhookEndpoint
from orders.client_webhooks.selectors import RECENT_DELIVERIES
from orders.client_webhooks.services import webhook_endpoint_create, webhook_endpoint_enable
from orders.models import Order
from orders.schemas import OrderPayload
from orders.services.intake import order_create
from tests.support.webhook_receiver import WebhookReceiver
from workflows.engine.services import waits_expire

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def webhook_settings(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    settings.WEBHOOKS_ALLOW_HTTP = True
    # Pauses longer than the engine's inline sleeps: the run suspends between attempts.
    settings.WEBHOOKS_RETRY_SCHEDULE = [60, 600]
    return settings


@pytest.fixture
def receiver():
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def admin_client(db) -> Client:
    user = User.objects.create_superuser("root", "root@example.com", "root-pass-123")
    client = Client()
    client.force_login(user)
    return client


def place(client: User, order_id: str) -> Order:
    order, _ = order_create(
        client=client,
        payload=OrderPayload(
            order_id=order_id,
            customer_id="cus_good",
            customer_email="ada@example.com",
            amount=Decimal("25.00"),
        ),
    )
    return order


def health(endpoint: WebhookEndpoint) -> tuple[bool, int, int, str, bool]:
    endpoint.refresh_from_db()
    return (
        endpoint.enabled,
        endpoint.failed_attempts,
        endpoint.consecutive_failures,
        endpoint.last_status,
        endpoint.failing_since is not None,
    )


def wake(seconds: int, queue_capture) -> None:
    waits_expire(now=timezone.now() + timedelta(seconds=seconds))
    queue_capture.drain()


def test_failures_count_from_the_first_attempt_across_deliveries_and_retries(
    intake, receiver, queue_capture, admin_client
):
    endpoint = webhook_endpoint_create(client=intake, url=receiver.url, events=["order.created"])
    receiver.answer(*[503] * 7)
    place(intake, "ord-1")
    queue_capture.drain()
    # One failed attempt, the delivery still retrying: failing already, not "0 failures".
    assert health(endpoint) == (True, 1, 0, "HTTP 503", True)
    first_failed_at = WebhookEndpoint.objects.get().failing_since
    page = admin_client.get(f"/admin/client_webhooks/webhookendpoint/{endpoint.pk}/change/")
    text = page.content.decode()
    assert "failing" in text and "1 failed attempt" in text and "HTTP 503" in text

    place(intake, "ord-2")  # a second delivery failing counts on the same endpoint
    queue_capture.drain()
    assert health(endpoint)[1] == 2
    wake(61, queue_capture)  # both deliveries' second attempts
    wake(601, queue_capture)  # and their last
    assert health(endpoint) == (True, 6, 2, "HTTP 503", True)
    assert WebhookEndpoint.objects.get().failing_since == first_failed_at

    # An operator's retry of a failed delivery counts on, and enabling resets nothing
    # of the health: the receiver is not fixed by enabling it.
    webhook_endpoint_enable(endpoint=endpoint)
    delivery = WebhookDelivery.objects.order_by("pk").first()
    call_command("webhooks_retry", str(delivery.pk))
    queue_capture.drain()
    assert health(endpoint) == (True, 7, 0, "HTTP 503", True)

    wake(61, queue_capture)  # the receiver answers 200 now
    assert health(endpoint) == (True, 0, 0, "HTTP 200", False)
    text = admin_client.get("/admin/client_webhooks/webhookendpoint/").content.decode()
    assert "healthy" in text


def test_a_receiver_that_does_not_answer_shows_why(intake, queue_capture, settings):
    settings.WEBHOOKS_TIMEOUT_SECONDS = 1
    endpoint = webhook_endpoint_create(
        client=intake, url="http://127.0.0.1:9/hook", events=["order.created"]
    )
    place(intake, "ord-1")
    queue_capture.drain()
    _, failed, _, last, failing = health(endpoint)
    assert failed == 1 and failing and "Error" in last and "HTTP" not in last


def test_the_endpoints_page_lists_its_recent_deliveries_bounded(intake, admin_client):
    endpoint = WebhookEndpoint.objects.create(
        client=intake, url="https://a.example/hook", events=["order.created"], secret="s"
    )
    other = WebhookEndpoint.objects.create(
        client=intake, url="https://b.example/hook", events=["order.created"], secret="s"
    )
    for i in range(RECENT_DELIVERIES + 5):
        WebhookDelivery.objects.create(
            endpoint=endpoint, event_id=f"evt_a{i:03d}", event_type="order.created"
        )
    WebhookDelivery.objects.create(endpoint=other, event_id="evt_other", event_type="order.created")

    text = admin_client.get(
        f"/admin/client_webhooks/webhookendpoint/{endpoint.pk}/change/"
    ).content.decode()
    assert text.count("/admin/client_webhooks/webhookdelivery/") >= RECENT_DELIVERIES
    assert text.count("<td>order.created</td>") == RECENT_DELIVERIES
    link = f"/admin/client_webhooks/webhookdelivery/?endpoint__id__exact={endpoint.pk}"
    assert link.replace("&", "&amp;") in text or link in text
    listing = admin_client.get(link)
    assert listing.status_code == 200
    assert f"{RECENT_DELIVERIES + 5} webhook deliveries" in listing.content.decode()

    failing = admin_client.get("/admin/client_webhooks/webhookendpoint/?health=failing")
    assert "a.example" not in failing.content.decode()
