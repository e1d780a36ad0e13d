"""The API is per client: each token sees, reviews and deduplicates only its own orders
and runs; another client's are a 404. Also the commands that name an order when two
clients share its id, the `?limit=` ceiling and the throttle shared between processes."""

import os
import subprocess
import sys

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.cache import cache, caches
from django.core.cache.backends.db import DatabaseCache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.http import Http404
from rest_framework.throttling import UserRateThrottle

from orders.api.pagination import MAX_PAGE_SIZE
from orders.errors import NotFound
from orders.models import Order
from orders.selectors import order_get_for, run_get_for
from tests.support import cluster
from tests.support.api import api_client_for

ORDERS = "/api/orders/"
BODY = {
    "order_id": "shared-1",
    "customer_id": "cus_good",
    "customer_email": "ada@example.com",
    "amount": "250.00",
}
NOT_FOUND = {"detail": "No Order matches the given query."}


@pytest.fixture(autouse=True)
def simulated(settings, db):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    cache.clear()
    yield
    cache.clear()


def submit(user: User, order_id: str, amount: str) -> dict:
    """The order as `user` submits it through the API."""
    response = api_client_for(user).post(ORDERS, {**BODY, "order_id": order_id, "amount": amount})
    assert response.status_code == 201, response.json()
    return response.json()


@pytest.fixture
def alice(db) -> User:
    return User.objects.create_user("alice")


@pytest.fixture
def bob(db) -> User:
    return User.objects.create_user("bob")


def test_a_client_lists_only_its_own_orders(alice, bob, queue_capture, place_order):
    submit(alice, "a-1", "1.00")
    submit(alice, "a-2", "2.00")
    submit(bob, "b-1", "3.00")
    place_order("4.00", order_id="console-1")  # no client: the console's or a command's

    mine = api_client_for(alice).get(ORDERS).json()
    assert mine["count"] == 2
    assert [o["order_id"] for o in mine["results"]] == ["a-2", "a-1"]
    assert [o["order_id"] for o in api_client_for(bob).get(ORDERS).json()["results"]] == ["b-1"]


def test_staff_with_the_view_permission_still_sees_only_its_own_orders_in_the_api(
    alice, queue_capture
):
    # The API is per client for everyone; staff see every order in the admin.
    staff = User.objects.create_user("stella", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_order"))
    submit(alice, "a-1", "1.00")
    api = api_client_for(staff)
    assert api.get(ORDERS).json()["count"] == 0
    assert api.get(f"{ORDERS}a-1/").status_code == 404


def test_another_clients_order_is_not_found(alice, bob, queue_capture):
    order = submit(alice, "a-1", "12.34")
    assert api_client_for(alice).get(f"{ORDERS}a-1/").json()["run_id"] == order["run_id"]

    theirs = api_client_for(bob).get(f"{ORDERS}a-1/")
    missing = api_client_for(bob).get(f"{ORDERS}never-was/")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json() == NOT_FOUND


def test_the_selectors_say_not_found_in_the_domains_words(alice, bob, queue_capture):
    """A selector knows nothing of HTTP: it raises the domain's `NotFound`, which the API
    (above) answers as a 404 with the same words."""
    run_id = submit(alice, "a-1", "12.34")["run_id"]
    with pytest.raises(NotFound, match=r"^No Order matches the given query\.$") as order:
        order_get_for(client=bob, order_id="a-1")
    with pytest.raises(NotFound, match=f"^No run {run_id}$") as run:
        run_get_for(client=bob, run_id=run_id)
    assert not isinstance(order.value, Http404) and not isinstance(run.value, Http404)


def test_another_clients_run_is_not_found(alice, bob, queue_capture):
    run_id = submit(alice, "a-1", "12.34")["run_id"]
    url = f"/api/runs/{run_id}/"
    assert api_client_for(alice).get(url).json()["id"] == run_id

    theirs = api_client_for(bob).get(url)
    unknown = api_client_for(bob).get("/api/runs/6f1c1d3e-0000-4000-8000-000000000000/")
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json() == {"detail": f"No run {run_id}"}  # as for an unknown run
    assert api_client_for(bob).get("/api/runs/not-a-uuid/").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_a_reviewer_client_cannot_decide_another_clients_review(queue_capture):
    reviewers, _ = Group.objects.get_or_create(name="Fraud reviewers")
    reviewers.permissions.add(Permission.objects.get(codename="decide_fraud_review"))
    alice = User.objects.create_user("alice")
    bob = User.objects.create_user("bob")
    bob.groups.add(reviewers)
    submit(alice, "a-big", "2500.00")
    submit(alice, "a-small", "10.00")
    assert sorted(queue_capture.drain()) == ["completed", "suspended"]

    api = api_client_for(bob)
    for order_id in ("a-big", "a-small", "never-was"):
        response = api.post(f"{ORDERS}{order_id}/review/", {"approved": True}, format="json")
        assert (response.status_code, response.json()) == (404, NOT_FOUND), order_id
    assert Order.objects.get(order_id="a-big").status == "awaiting_review"
    assert queue_capture.sent == []


def test_two_clients_may_use_the_same_order_id(alice, bob, queue_capture):
    first = api_client_for(alice).post(ORDERS, BODY, format="json")
    other_body = {**BODY, "amount": "99.00"}
    second = api_client_for(bob).post(ORDERS, other_body, format="json")

    assert (first.status_code, second.status_code) == (201, 201), second.json()
    assert first.json()["run_id"] != second.json()["run_id"]
    assert second.json()["amount"] == "99.00"
    orders = Order.objects.filter(order_id="shared-1")
    assert {(o.client.username, str(o.amount)) for o in orders} == {
        ("alice", "250.00"),
        ("bob", "99.00"),
    }
    assert len(queue_capture.sent) == 2
    # Each client's repeat is still its own repeat, and its own conflict.
    assert api_client_for(bob).post(ORDERS, other_body, format="json").status_code == 200
    assert api_client_for(bob).post(ORDERS, BODY, format="json").status_code == 409


def test_an_idempotency_key_is_the_clients_own(alice, bob, queue_capture):
    key = {"Idempotency-Key": "key-1"}
    alices = api_client_for(alice).post(ORDERS, {**BODY, "order_id": "a-secret"}, headers=key)
    assert alices.status_code == 201

    bobs_body = {**BODY, "order_id": "b-1", "amount": "5.00"}
    bobs = api_client_for(bob).post(ORDERS, bobs_body, format="json", headers=key)
    assert bobs.status_code == 201, bobs.json()
    assert bobs.json()["order_id"] == "b-1" and "a-secret" not in bobs.content.decode()

    again = api_client_for(bob).post(ORDERS, bobs_body, format="json", headers=key)
    assert again.status_code == 200 and again.json()["run_id"] == bobs.json()["run_id"]
    conflict = api_client_for(bob).post(ORDERS, BODY, format="json", headers=key)
    assert conflict.status_code == 409 and "a-secret" not in conflict.json()["detail"]
    assert Order.objects.filter(idempotency_key="key-1").count() == 2


def test_limit_is_capped(alice):
    Order.objects.bulk_create(
        Order(
            client=alice,
            order_id=f"bulk-{n}",
            customer_id="cus_good",
            customer_email="ada@example.com",
            amount="1.00",
            request_fingerprint="-",
        )
        for n in range(MAX_PAGE_SIZE + 1)
    )
    page = api_client_for(alice).get(ORDERS, {"limit": 10_000}).json()
    assert page["count"] == MAX_PAGE_SIZE + 1
    assert len(page["results"]) == MAX_PAGE_SIZE and page["next"]


# --- commands name the client when the order id is shared ----------------------------------


def test_review_command_needs_the_client_when_clients_share_the_order_id(
    alice, bob, reviewer, queue_capture, place_order
):
    place_order("2500.00", order_id="shared-1", client=alice)
    place_order("10.00", order_id="shared-1", client=bob)
    with pytest.raises(CommandError, match=r"Several clients .* \(alice, bob\): name one"):
        call_command("review", "shared-1", "--approve", "--user", "rita")
    with pytest.raises(CommandError, match="No order 'shared-1' of client 'rita'"):
        call_command("review", "shared-1", "--approve", "--user", "rita", "--client", "rita")
    # Bob's order has no review: the command acted on Bob's, not on a guess.
    with pytest.raises(CommandError, match="has no fraud review"):
        call_command("review", "shared-1", "--approve", "--user", "rita", "--client", "bob")


def test_process_order_submits_as_the_named_client(alice, queue_capture):
    args = ["--order-id", "cli-1", "--customer-id", "cus_good", "--email", "ada@example.com"]
    call_command("process_order", *args, "--amount", "5.00", "--client", "alice")
    call_command("process_order", *args, "--amount", "6.00")
    assert Order.objects.get(order_id="cli-1", client=alice).amount == 5
    assert Order.objects.get(order_id="cli-1", client=None).amount == 6
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        call_command("process_order", *args, "--amount", "5.00", "--client", "nobody")


# --- the throttle counts in the shared cache ------------------------------------------------


def test_the_cache_is_the_database_or_redis(settings):
    assert isinstance(caches["default"], DatabaseCache)
    code = "from django.conf import settings; print(settings.CACHES['default']['BACKEND'])"
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=cluster.ROOT,
        env={**os.environ, "REDIS_URL": "redis://127.0.0.1:6379/0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.split()[-1] == "django.core.cache.backends.redis.RedisCache", result.stderr


@pytest.mark.django_db(transaction=True)
def test_the_throttle_counts_requests_of_every_process(monkeypatch):
    """Two requests here and a third from another process use up a rate of 3: the
    fourth, here, is refused. A per-process cache would have let it through."""
    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "3/minute"})
    cache.clear()
    user = User.objects.create_user("alice")
    api = api_client_for(user)
    assert [api.get(ORDERS).status_code for _ in range(2)] == [200, 200]

    other_process = (
        "from django.test.utils import setup_test_environment; setup_test_environment(); "
        "from rest_framework.test import APIClient; c = APIClient(); "
        f"c.credentials(HTTP_AUTHORIZATION='Token {user.auth_token.key}'); "
        f"print(c.get('{ORDERS}').status_code)"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", other_process],
        cwd=cluster.ROOT,
        env={
            **os.environ,
            "DATABASE_URL": cluster.test_database_url(),
            "API_THROTTLE_RATE": "3/minute",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.split()[-1:] == ["200"], result.stderr

    refused = api.get(ORDERS)
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    cache.clear()
