"""Moving the client webhooks into their own app keeps a deployed database's endpoints,
deliveries and attempts where they are (the same tables, no copy), and the staff who
could change endpoints still can."""

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from orders.client_webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

BEFORE = [("orders", "0013_email_kinds"), ("client_webhooks", None)]


@pytest.mark.django_db(transaction=True)
def test_the_upgrade_keeps_the_endpoints_their_deliveries_and_the_permissions():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE[:1]).apps
    ContentType = old.get_model("contenttypes", "ContentType")
    Permission = old.get_model("auth", "Permission")
    OldUser = old.get_model("auth", "User")
    # A database deployed before the move has the old app's content type and permission
    # (migrating back relabels the test database's, as a deployed one would have them).
    assert not ContentType.objects.filter(app_label="client_webhooks").exists()
    endpoint_type, _ = ContentType.objects.get_or_create(
        app_label="orders", model="webhookendpoint"
    )
    change, _ = Permission.objects.get_or_create(
        content_type=endpoint_type,
        codename="change_webhookendpoint",
        defaults={"name": "Can change"},
    )
    client = OldUser.objects.create(username="intake")
    editor = OldUser.objects.create(username="editor", is_staff=True)
    editor.user_permissions.add(change)
    endpoint = old.get_model("orders", "WebhookEndpoint").objects.create(
        client=client, url="https://hooks.example.com/in", events=["order.created"], secret="s1"
    )
    delivery = old.get_model("orders", "WebhookDelivery").objects.create(
        endpoint=endpoint, event_id="evt_1", event_type="order.created", status="failed"
    )
    old.get_model("orders", "WebhookAttempt").objects.create(
        delivery=delivery, number=1, status_code=500
    )

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    moved = WebhookEndpoint.objects.get()
    assert (moved.pk, moved.client.username, moved.url, moved.secret) == (
        endpoint.pk,
        "intake",
        "https://hooks.example.com/in",
        "s1",
    )
    assert list(WebhookDelivery.objects.values_list("pk", "endpoint_id", "status")) == [
        (delivery.pk, endpoint.pk, "failed")
    ]
    assert list(WebhookAttempt.objects.values_list("delivery_id", "status_code")) == [
        (delivery.pk, 500)
    ]
    assert User.objects.get(username="editor").has_perm("client_webhooks.change_webhookendpoint")
