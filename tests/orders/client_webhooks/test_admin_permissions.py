"""The webhook admin's actions need their permission (issue 18, item 2): a view-only
staff user who crafts the action's POST changes nothing; a user with the permission
runs it."""

import itertools

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from orders.client_webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from orders.client_webhooks.services import webhook_endpoint_create
from workflows.models import WorkflowRun

pytestmark = pytest.mark.django_db

ENDPOINTS = "/admin/client_webhooks/webhookendpoint/"
DELIVERIES = "/admin/client_webhooks/webhookdelivery/"
NUMBERS = itertools.count()


@pytest.fixture(autouse=True)
def local_urls(settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    settings.WEBHOOKS_ALLOW_HTTP = True


def staff_with(*codenames: str) -> Client:
    user = User.objects.create_user(f"staff-{next(NUMBERS)}", password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


VIEWER = ("view_webhookendpoint", "view_webhookdelivery")


def crafted(client: Client, changelist: str, action: str, pk: int) -> str:
    """The action's POST as the changelist would send it, whether it offers it or not."""
    response = client.post(
        changelist, {"action": action, "index": "0", "_selected_action": [pk]}, follow=True
    )
    assert response.status_code == 200
    return response.content.decode()


@pytest.fixture
def endpoint() -> WebhookEndpoint:
    client = User.objects.create_user("intake")
    return webhook_endpoint_create(
        client=client, url="http://127.0.0.1:9/hook", events=["order.created"]
    )


@pytest.fixture
def disabled(endpoint) -> WebhookEndpoint:
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        enabled=False, disabled_reason="5 failures in a row", consecutive_failures=5
    )
    endpoint.refresh_from_db()
    return endpoint


@pytest.fixture
def failed_delivery(endpoint) -> WebhookDelivery:
    return WebhookDelivery.objects.create(
        endpoint=endpoint,
        event_id="evt_1",
        event_type="order.created",
        status=DeliveryStatus.FAILED,
        attempts=6,
    )


def test_a_view_only_user_cannot_rotate_a_secret_nor_read_one(endpoint):
    viewer = staff_with(*VIEWER)
    assert "rotate_secret_selected" not in viewer.get(ENDPOINTS).content.decode()
    page = crafted(viewer, ENDPOINTS, "rotate_secret_selected", endpoint.pk)
    old = endpoint.secret
    endpoint.refresh_from_db()
    assert endpoint.secret == old and old not in page

    editor = staff_with(*VIEWER, "change_webhookendpoint")
    page = crafted(editor, ENDPOINTS, "rotate_secret_selected", endpoint.pk)
    endpoint.refresh_from_db()
    assert endpoint.secret != old and endpoint.secret in page


def test_a_view_only_user_cannot_enable_an_endpoint(disabled):
    viewer = staff_with(*VIEWER)
    assert "enable_selected" not in viewer.get(ENDPOINTS).content.decode()
    crafted(viewer, ENDPOINTS, "enable_selected", disabled.pk)
    disabled.refresh_from_db()
    assert not disabled.enabled and disabled.consecutive_failures == 5

    crafted(
        staff_with(*VIEWER, "change_webhookendpoint"), ENDPOINTS, "enable_selected", disabled.pk
    )
    disabled.refresh_from_db()
    assert disabled.enabled and disabled.consecutive_failures == 0


def test_a_view_only_user_cannot_retry_a_delivery(failed_delivery, queue_capture):
    viewer = staff_with(*VIEWER)
    assert "retry_selected" not in viewer.get(DELIVERIES).content.decode()
    crafted(viewer, DELIVERIES, "retry_selected", failed_delivery.pk)
    failed_delivery.refresh_from_db()
    assert failed_delivery.status == DeliveryStatus.FAILED and failed_delivery.run is None
    assert not WorkflowRun.objects.exists() and queue_capture.sent == []

    # The endpoint's editor may not either: retrying is the delivery's change permission.
    crafted(
        staff_with(*VIEWER, "change_webhookendpoint"),
        DELIVERIES,
        "retry_selected",
        failed_delivery.pk,
    )
    assert not WorkflowRun.objects.exists()

    operator = staff_with(*VIEWER, "change_webhookdelivery")
    assert "retry_selected" in operator.get(DELIVERIES).content.decode()
    crafted(operator, DELIVERIES, "retry_selected", failed_delivery.pk)
    failed_delivery.refresh_from_db()
    assert failed_delivery.status == DeliveryStatus.PENDING
    assert queue_capture.sent == [str(failed_delivery.run_id)]


def test_the_pages_where_the_webhook_admin_was_still_lead_to_it(endpoint):
    """The admin moved with the app (`/admin/orders/...` to `/admin/client_webhooks/...`):
    bookmarks and links in old messages still land, and still need their permission."""
    old = f"/admin/orders/webhookendpoint/{endpoint.pk}/change/?_changelist_filters=x"
    response = Client().get(old)
    assert response.status_code == 302
    assert response["Location"] == f"{ENDPOINTS}{endpoint.pk}/change/?_changelist_filters=x"
    assert staff_with(*VIEWER).get(old, follow=True).status_code == 200
    assert Client().get(old, follow=True).redirect_chain[-1][0].startswith("/admin/login/")
