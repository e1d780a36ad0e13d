"""The reviewer API (`/api/reviews/`): fraud reviewers list and decide every client's
reviews; intake clients read only their own orders' reviews. Walked as each role, and
as users with too little, through the real workflow: a decision resumes a suspended run."""

from datetime import timedelta

import pytest
import yaml
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.core.management import call_command
from rest_framework.test import APIClient

from orders.models import FraudReview, Order, OrderStatus, PaymentStatus
from tests.support.api import api_client_for
from workflows.engine.services import waits_expire

pytestmark = pytest.mark.django_db(transaction=True)

REVIEWS = "/api/reviews/"


@pytest.fixture(autouse=True)
def simulated(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    cache.clear()  # the throttle's counts
    yield
    cache.clear()


@pytest.fixture
def clients(db):
    """Two intake clients, each with an order `ord-1` over the review threshold (order
    ids are per client; review ids are global), both suspended at their reviews."""
    return {name: User.objects.create_user(name) for name in ("alice", "bob")}


@pytest.fixture
def suspended(clients, place_order, queue_capture) -> dict[str, FraudReview]:
    for name, user in clients.items():
        api_client_for(user)  # an intake client, with a token
        place_order("2500.00", order_id="ord-1", client=user, email=f"{name}@example.com")
    assert queue_capture.drain() == ["suspended", "suspended"]
    return {
        order.client.username: FraudReview.objects.get(run_id=order.run_id)
        for order in Order.objects.select_related("client")
    }


def decision_url(review: FraudReview) -> str:
    return f"{REVIEWS}{review.pk}/decision/"


def test_a_reviewer_lists_and_decides_every_clients_review_and_the_run_resumes(
    suspended, reviewer, queue_capture
):
    rita = api_client_for(reviewer, intake_client=False)  # a reviewer, not an intake client
    listed = rita.get(REVIEWS, {"state": "pending"})
    assert listed.status_code == 200, listed.json()
    body = listed.json()
    assert body["count"] == 2 and body["next"] is None
    by_client = {r["order"]["client"]: r for r in body["results"]}
    assert set(by_client) == {"alice", "bob"}
    alice = by_client["alice"]
    assert alice["id"] == suspended["alice"].pk and alice["state"] == "pending"
    assert alice["order"] | {"status": None} == {
        "order_id": "ord-1",
        "client": "alice",
        "customer_id": "cus_good",
        "customer_email": "alice@example.com",
        "amount": "2500.00",
        "currency": "usd",
        "status": None,
        "payment_status": "authorized",  # a hold while the review is pending
        "charge_id": alice["order"]["charge_id"],
    }
    assert alice["order"]["status"] == "awaiting_review" and alice["order"]["charge_id"]
    assert "2500" in alice["agent_summary"]  # the agent's own words
    # Bob's order is the same customer's (cus_good), placed after Alice's: its history
    # and velocity count hers.
    assert alice["risk"]["orders"] == 0 and alice["risk"]["customer_24h"] == 0
    risk = by_client["bob"]["risk"]
    assert risk["orders"] == 1 and risk["customer_24h"] == 1 and risk["email_24h"] == 0
    assert risk["email_domain"] == "example.com" and risk["domain_new"] is False
    assert risk["paid_orders"] == 0 and risk["average"] is None
    assert alice["links"]["decision"].endswith(decision_url(suspended["alice"]))
    assert rita.get(alice["links"]["self"]).json() == alice

    decided = rita.post(
        decision_url(suspended["alice"]), {"approved": True, "note": "known customer"}
    )
    assert decided.status_code == 200, decided.json()
    assert decided.json()["state"] == "approved" and decided.json()["decided_by"] == "rita"
    assert decided.json()["note"] == "known customer" and decided.json()["decided_at"]
    rejected = rita.post(decision_url(suspended["bob"]), {"approved": False})
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"

    # The decisions resumed both suspended runs.
    assert sorted(queue_capture.drain()) == ["completed", "completed"]
    alices = Order.objects.get(client__username="alice")
    bobs = Order.objects.get(client__username="bob")
    assert (alices.status, alices.payment_status) == (OrderStatus.COMPLETED, PaymentStatus.CAPTURED)
    assert (bobs.status, bobs.payment_status) == (OrderStatus.REJECTED, PaymentStatus.CANCELED)
    # Each client reads the decision on its own order.
    seen = api_client_for(alices.client).get("/api/orders/ord-1/review/").json()
    assert seen["state"] == "approved" and seen["decided_by"] == "rita"
    assert seen["id"] == suspended["alice"].pk

    # One decision per review: the second is a conflict, and changes nothing.
    again = rita.post(decision_url(suspended["alice"]), {"approved": False})
    assert again.status_code == 409
    assert again.json()["detail"].startswith("The review of order ord-1 was already decided")
    assert rita.get(f"{REVIEWS}{suspended['alice'].pk}/").json()["state"] == "approved"
    assert rita.get(REVIEWS, {"state": "pending"}).json()["count"] == 0
    assert [
        r["order"]["client"] for r in rita.get(REVIEWS, {"state": "rejected"}).json()["results"]
    ] == ["bob"]


def test_an_intake_client_cannot_list_read_or_decide_reviews(suspended, clients):
    alice = api_client_for(clients["alice"])
    review = suspended["bob"]
    for response in (
        alice.get(REVIEWS),
        alice.get(f"{REVIEWS}{review.pk}/"),
        alice.post(decision_url(review), {"approved": True}),
        alice.post(decision_url(suspended["alice"]), {"approved": True}),  # not even its own
    ):
        assert response.status_code == 403
        assert response.json() == {"detail": "You may not decide fraud reviews."}
    # Nor through its order's URL, without the reviewer's permission.
    denied = alice.post("/api/orders/ord-1/review/", {"approved": True})
    assert denied.status_code == 403
    assert set(FraudReview.objects.values_list("status", flat=True)) == {"waiting"}

    # It reads its own order's review; another client's is not found, by any id.
    own = alice.get("/api/orders/ord-1/review/")
    assert own.status_code == 200
    assert own.json() | {"deadline": None} == {
        "id": suspended["alice"].pk,
        "state": "pending",
        "decided_by": None,
        "decided_at": None,
        "note": "",
        "deadline": None,
    }
    carol = api_client_for(User.objects.create_user("carol"))
    assert carol.get("/api/orders/ord-1/review/").status_code == 404
    assert carol.get("/api/orders/ord-1/").status_code == 404


def test_staff_without_the_permission_is_refused_and_a_direct_grant_is_enough(
    suspended, staff_without_permission
):
    sam = api_client_for(staff_without_permission)  # staff, and an intake client
    assert sam.get(REVIEWS).status_code == 403
    assert sam.get(f"{REVIEWS}{suspended['bob'].pk}/").status_code == 403
    assert sam.post(decision_url(suspended["bob"]), {"approved": True}).status_code == 403
    assert FraudReview.objects.get(pk=suspended["bob"].pk).state == "pending"

    # The permission given to the user itself, not through the group, opens the doors.
    staff_without_permission.user_permissions.add(
        Permission.objects.get(codename="decide_fraud_review")
    )
    sam = api_client_for(User.objects.get(pk=staff_without_permission.pk))
    assert sam.get(REVIEWS).json()["count"] == 2
    assert sam.post(decision_url(suspended["bob"]), {"approved": True}).status_code == 200

    # Without a token, nobody is let in at all.
    assert APIClient().get(REVIEWS).status_code == 401


def test_bad_input_is_a_400_with_field_errors_and_unknown_ids_are_404(suspended, reviewer):
    rita = api_client_for(reviewer, intake_client=False)
    review = suspended["alice"]
    bad_state = rita.get(REVIEWS, {"state": "waiting"})
    assert bad_state.status_code == 400
    assert bad_state.json() == {"state": ['"waiting" is not a valid choice.']}

    url = decision_url(review)
    assert rita.post(url, {}).json() == {"approved": ["This field is required."]}
    assert rita.post(url, {"approved": "maybe"}).json() == {
        "approved": ["Must be a valid boolean."]
    }
    two_lines = rita.post(url, {"approved": True, "note": "one\ntwo"})
    assert two_lines.status_code == 400 and list(two_lines.json()) == ["note"]
    assert rita.post(url, {"approved": True, "note": "x" * 1001}).status_code == 400
    not_json = rita.post(url, "approved", content_type="text/plain")
    assert not_json.status_code == 415
    assert FraudReview.objects.get(pk=review.pk).state == "pending"  # nothing decided

    for review_id in (review.pk + 1000, "abc", "0", "-1", "9" * 30):
        for response in (
            rita.get(f"{REVIEWS}{review_id}/"),
            rita.post(f"{REVIEWS}{review_id}/decision/", {"approved": True}),
        ):
            assert response.status_code == 404, (review_id, response.content)
            assert response.json() == {"detail": f"No fraud review {review_id}"}


def test_an_expired_review_is_a_conflict_and_is_listed_as_expired(suspended, reviewer):
    rita = api_client_for(reviewer, intake_client=False)
    review = suspended["alice"]
    waits_expire(now=review.deadline + timedelta(seconds=1))
    refused = rita.post(decision_url(review), {"approved": True})
    assert refused.status_code == 409
    assert "expired" in refused.json()["detail"]
    expired = rita.get(REVIEWS, {"state": "expired"}).json()["results"]
    assert {r["id"] for r in expired} == {review.pk, suspended["bob"].pk}


def test_the_list_is_paginated_and_costs_the_same_queries_for_more_rows(
    suspended, reviewer, place_order, queue_capture, django_assert_max_num_queries, clients
):
    rita = api_client_for(reviewer, intake_client=False)
    first = rita.get(REVIEWS, {"limit": 1}).json()
    assert first["count"] == 2 and len(first["results"]) == 1 and first["next"]
    second = rita.get(first["next"]).json()
    assert {first["results"][0]["id"], second["results"][0]["id"]} == {
        r.pk for r in suspended.values()
    }
    for n in range(4):
        place_order("3000.00", order_id=f"more-{n}", client=clients["bob"])
    queue_capture.drain()
    # Token, user, permissions, throttle, count, page: none of it per row.
    with django_assert_max_num_queries(12):
        page = rita.get(REVIEWS)
    assert page.json()["count"] == 6


def test_a_reviewer_who_is_also_the_client_may_still_use_the_deprecated_route(
    clients, reviewer, place_order, queue_capture
):
    order = place_order("2500.00", client=reviewer)
    assert queue_capture.drain() == ["suspended"]
    review = FraudReview.objects.get(run_id=order.run_id)
    rita = api_client_for(reviewer)
    answer = rita.post(f"/api/orders/{order.order_id}/review/", {"approved": True})
    assert answer.status_code == 200 and answer.json()["review"]["state"] == "approved"
    assert answer["Deprecation"] == "true"
    assert answer["Link"] == (
        f'<http://testserver/api/reviews/{review.pk}/decision/>; rel="successor-version"'
    )
    # Only the caller's own orders there: another client's same id is not found.
    other = place_order("2500.00", order_id="theirs", client=clients["alice"])
    assert queue_capture.drain() == ["completed", "suspended"]
    assert rita.post("/api/orders/theirs/review/", {"approved": True}).status_code == 404
    assert other.order_id == "theirs"


def test_the_reviewer_api_is_in_the_schema(tmp_path):
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    paths = yaml.safe_load(target.read_text())["paths"]
    assert set(paths["/api/reviews/"]["get"]["responses"]) == {"200", "400", "401", "403", "429"}
    assert [p["name"] for p in paths["/api/reviews/"]["get"]["parameters"]] == [
        "limit",
        "offset",
        "state",
    ]
    assert set(paths["/api/reviews/{review_id}/"]["get"]["responses"]) >= {"200", "403", "404"}
    decide = paths["/api/reviews/{review_id}/decision/"]["post"]
    assert set(decide["responses"]) >= {"200", "400", "403", "404", "409"}
    old = paths["/api/orders/{order_id}/review/"]
    assert old["post"]["deprecated"] is True and "deprecated" not in old["get"]
