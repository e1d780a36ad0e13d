"""A token alone is not enough (issue 18, item 7): every API endpoint checks
`orders.add_order` for writes and `orders.view_order` for reads, which the "Intake
clients" group holds."""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import yaml
from django.contrib.auth.models import Group, Permission, User
from django.core.cache import cache
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from orders.client_webhooks.models import WebhookEndpoint
from orders.client_webhooks.services import webhook_endpoint_create
from orders.models import Order
from orders.schemas import OrderPayload
from orders.selectors import order_review_info
from orders.services.intake import order_create
from tests.support.api import api_client_for
from workflows.models import WorkflowRun

pytestmark = pytest.mark.django_db

NEW_ORDER = {
    "order_id": "new-1",
    "customer_id": "cus_good",
    "customer_email": "ada@example.com",
    "amount": "25.00",
}

NEW_ENDPOINT = {"url": "http://127.0.0.1:9/b", "events": ["order.completed"]}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    body: dict[str, Any] | None
    write: bool
    success: int


# In this order, so that with the permission each succeeds (the delete comes last).
ENDPOINTS = [
    Endpoint("get", "/api/orders/", None, False, 200),
    Endpoint("post", "/api/orders/", NEW_ORDER, True, 201),
    Endpoint("get", "/api/orders/big-1/", None, False, 200),
    Endpoint("post", "/api/orders/big-1/review/", {"approved": True}, True, 200),
    Endpoint("get", "/api/runs/{run}/", None, False, 200),
    Endpoint("get", "/api/webhooks/", None, False, 200),
    Endpoint("post", "/api/webhooks/", NEW_ENDPOINT, True, 201),
    Endpoint("post", "/api/webhooks/{endpoint}/rotate-secret/", None, True, 200),
    Endpoint("delete", "/api/webhooks/{endpoint}/", None, True, 204),
]


@pytest.fixture(autouse=True)
def simulated(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    settings.WEBHOOKS_ALLOW_HTTP = True
    cache.clear()  # the throttle's counts
    yield
    cache.clear()


@pytest.fixture
def client_user(queue_capture) -> User:
    """A client that may decide reviews, with an order awaiting review and an endpoint:
    only its intake permissions vary."""
    user = User.objects.create_user("acme")
    user.user_permissions.add(Permission.objects.get(codename="decide_fraud_review"))
    order_create(
        client=user,
        payload=OrderPayload(
            order_id="big-1",
            customer_id="cus_good",
            customer_email="ada@example.com",
            amount=Decimal("2500.00"),
        ),
    )
    assert queue_capture.drain() == ["suspended"]
    webhook_endpoint_create(client=user, url="http://127.0.0.1:9/a", events=["order.created"])
    return user


def token_client(user: User) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return api


def call(api: APIClient, endpoint: Endpoint, user: User) -> Any:
    order = Order.objects.get(client=user, order_id="big-1")
    first = WebhookEndpoint.objects.filter(client=user).order_by("pk").first()
    path = endpoint.path.format(run=order.run_id, endpoint=first.pk if first else 0)
    return getattr(api, endpoint.method)(path, endpoint.body, format="json")


def state(user: User) -> tuple[Any, ...]:
    """What any write would change: orders, runs, the review, the endpoints."""
    order = Order.objects.get(client=user, order_id="big-1")
    review = order_review_info(order)
    return (
        sorted(Order.objects.values_list("order_id", flat=True)),
        WorkflowRun.objects.count(),
        review["state"] if review else None,
        sorted(WebhookEndpoint.objects.values_list("pk", "secret", "url")),
    )


@pytest.mark.parametrize(
    ("codenames", "allowed"),
    [
        ([], set()),
        (["view_order"], {"read"}),
        (["add_order"], {"write"}),
        (["add_order", "view_order"], {"read", "write"}),
    ],
    ids=["neither", "view_order", "add_order", "both"],
)
def test_each_endpoint_needs_add_order_to_write_and_view_order_to_read(
    client_user, codenames, allowed, queue_capture
):
    client_user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    api = token_client(client_user)
    for endpoint in ENDPOINTS:
        before = state(client_user)
        response = call(api, endpoint, client_user)
        if ("write" if endpoint.write else "read") in allowed:
            assert response.status_code == endpoint.success, (endpoint, response.content)
            continue
        needed = "orders.add_order" if endpoint.write else "orders.view_order"
        assert response.status_code == 403, (endpoint, response.content)
        assert response.json() == {
            "detail": f"Your token's user lacks the {needed} permission "
            '(the "Intake clients" group holds it).'
        }
        assert state(client_user) == before, endpoint
    if "write" not in allowed:
        assert queue_capture.sent == []


def test_the_intake_clients_group_from_the_migration_may_do_everything(client_user):
    group = Group.objects.get(name="Intake clients")
    assert sorted(group.permissions.values_list("codename", flat=True)) == [
        "add_order",
        "view_order",
    ]
    client_user.groups.add(group)
    api = token_client(client_user)
    for endpoint in ENDPOINTS:
        response = call(api, endpoint, client_user)
        assert response.status_code == endpoint.success, (endpoint, response.content)


def test_staff_and_reviewers_are_no_intake_clients(client_user):
    # Staff status and the reviewer's permission place no order.
    client_user.is_staff = True
    client_user.save()
    client_user.groups.add(Group.objects.get(name="Fraud reviewers"))
    response = token_client(client_user).post("/api/orders/", NEW_ORDER, format="json")
    assert response.status_code == 403 and not Order.objects.filter(order_id="new-1").exists()


def test_a_reviewer_without_the_intake_permission_cannot_decide_through_the_api(
    client_user, queue_capture
):
    client_user.user_permissions.add(Permission.objects.get(codename="view_order"))
    api = token_client(client_user)
    response = api.post("/api/orders/big-1/review/", {"approved": True}, format="json")
    assert response.status_code == 403
    assert order_review_info(Order.objects.get(order_id="big-1"))["state"] == "pending"
    assert (
        api_client_for(client_user)
        .post("/api/orders/big-1/review/", {"approved": True}, format="json")
        .status_code
        == 200
    )


def test_the_schema_documents_the_403_of_every_operation(tmp_path):
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--file", str(target))
    paths = yaml.safe_load(target.read_text())["paths"]
    undocumented = [
        f"{method.upper()} {path}"
        for path, operations in paths.items()
        for method, operation in operations.items()
        if "403" not in operation["responses"]
    ]
    assert len(paths) >= 6 and undocumented == []


@pytest.mark.django_db(transaction=True)
def test_the_upgrade_keeps_existing_clients_and_gives_staff_tokens_nothing():
    """Before the group, a token was all a client needed: the migration that adds the group
    puts the non-staff token holders in it, so no working client breaks on deploy."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = [("orders", "0011_order_refunded_amount_and_dispute_memory")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(
        [*before, ("authtoken", "0004_alter_tokenproxy_options")]
    ).apps
    OldUser, OldToken = old.get_model("auth", "User"), old.get_model("authtoken", "Token")
    client = OldUser.objects.create(username="old-client")
    staff = OldUser.objects.create(username="old-staff", is_staff=True)
    OldUser.objects.create(username="no-token")
    for user, key in ((client, "a" * 40), (staff, "b" * 40)):
        OldToken.objects.create(user=user, key=key)

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    members = set(
        Group.objects.get(name="Intake clients").user_set.values_list("username", flat=True)
    )
    assert members == {"old-client"}
    assert User.objects.get(username="old-client").has_perm("orders.add_order")
