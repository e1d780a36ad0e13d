"""The intake API over HTTP (DRF's test client): status codes, validation, idempotency,
reads, fraud-review decisions and the OpenAPI schema."""

from decimal import Decimal

import pytest
import yaml
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient
from rest_framework.throttling import UserRateThrottle

from orders.models import Order
from tests.support.api import api_client_for
from workflows.models import WorkflowRun

ORDERS = "/api/orders/"
BODY = {
    "order_id": "ord-1",
    "customer_id": "cus_good",
    "customer_email": "ada@example.com",
    "amount": "250.00",
}


@pytest.fixture(autouse=True)
def simulated(settings, db):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    # The throttle counts live in the cache, a database table: start every test from zero.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def intake(db) -> User:
    return User.objects.create_user("intake")


@pytest.fixture
def api(intake) -> APIClient:
    return api_client_for(intake)


def nothing_written() -> bool:
    return Order.objects.count() == 0 and WorkflowRun.objects.count() == 0


# --- POST /api/orders/ ------------------------------------------------------------------


def test_create_returns_201_with_the_order_and_starts_its_run(api, queue_capture):
    response = api.post(ORDERS, {**BODY, "currency": "USD"}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    order = Order.objects.get()
    run_id = str(order.run_id)
    assert queue_capture.sent == [run_id]
    assert body | {"created_at": None, "updated_at": None} == {
        "order_id": "ord-1",
        "customer_id": "cus_good",
        "customer_email": "ada@example.com",
        "amount": "250.00",
        "currency": "usd",
        "status": "processing",
        "failure_reason": "",
        "waiting_for": None,
        "payment_status": "none",
        "charge_id": "",
        "refund_id": "",
        "refunded_amount": None,
        "email_sent": False,
        "fraud_review_required": False,
        "fraud_approved": None,
        "review": None,
        "run_id": run_id,
        "model_cost_usd": None,  # nothing spent yet
        "created_at": None,
        "updated_at": None,
        "links": {
            "self": "http://testserver/api/orders/ord-1/",
            "run": f"http://testserver/api/runs/{run_id}/",
            "trace": f"http://testserver/runs/{run_id}/",
        },
    }
    assert body["created_at"] and body["updated_at"]


def test_repeat_with_the_same_body_returns_the_existing_order(api, queue_capture):
    first = api.post(ORDERS, BODY, format="json")
    again = api.post(ORDERS, {**BODY, "amount": "250"}, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    # The 201 is built from the order as created, the 200 read back: nothing ran between.
    assert again.json() == first.json()
    assert Order.objects.count() == 1 and WorkflowRun.objects.count() == 1
    assert len(queue_capture.sent) == 1


def test_same_order_id_with_another_body_is_a_conflict(api, queue_capture):
    api.post(ORDERS, BODY, format="json")
    response = api.post(ORDERS, {**BODY, "amount": "251.00"}, format="json")
    assert response.status_code == 409
    assert response.json() == {"detail": "Order ord-1 already exists with a different request body"}
    assert Order.objects.get().amount == Decimal("250.00") and WorkflowRun.objects.count() == 1


def test_idempotency_key_reused(api, queue_capture):
    headers = {"Idempotency-Key": "key-123"}
    created = api.post(ORDERS, BODY, format="json", headers=headers)
    assert created.status_code == 201
    assert Order.objects.get().idempotency_key == "key-123"

    same = api.post(ORDERS, BODY, format="json", headers=headers)
    assert same.status_code == 200 and same.json()["order_id"] == "ord-1"

    other_id = api.post(ORDERS, {**BODY, "order_id": "ord-2"}, format="json", headers=headers)
    assert other_id.status_code == 409
    assert "already exists with a different request body" in other_id.json()["detail"]

    other_body = api.post(ORDERS, {**BODY, "amount": "9.99"}, format="json", headers=headers)
    assert other_body.status_code == 409
    assert Order.objects.count() == 1 and len(queue_capture.sent) == 1


def test_idempotency_key_too_long_is_refused(api, queue_capture):
    response = api.post(ORDERS, BODY, format="json", headers={"Idempotency-Key": "k" * 256})
    assert response.status_code == 400
    assert response.json() == {
        "Idempotency-Key": ["Ensure this header has no more than 255 characters."]
    }
    assert nothing_written()


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"customer_email": None}, "customer_email", "This field is required."),
        ({"order_id": None}, "order_id", "This field is required."),
        ({"order_id": "ord 1/x"}, "order_id", "Use 1 to 64 characters among letters"),
        ({"order_id": "o" * 65}, "order_id", "no more than 64 characters"),
        ({"customer_id": ""}, "customer_id", "This field may not be blank."),
        ({"customer_email": "not-an-email"}, "customer_email", "Enter a valid email address."),
        ({"amount": "0"}, "amount", "The amount must be greater than 0."),
        ({"amount": "-5.00"}, "amount", "The amount must be greater than 0."),
        ({"amount": "10.005"}, "amount", "Ensure that there are no more than 2 decimal places."),
        ({"amount": "abc"}, "amount", "A valid number is required."),
        ({"amount": "100000.01"}, "amount", "The amount must not be more than 100000.00."),
        ({"currency": "xyz"}, "currency", "Unknown currency 'xyz'; use one of usd, eur, gbp."),
    ],
)
def test_invalid_input_is_a_field_error_and_writes_nothing(
    api, queue_capture, change, field, message
):
    body = {key: value for key, value in {**BODY, **change}.items() if value is not None}
    response = api.post(ORDERS, body, format="json")
    assert response.status_code == 400
    errors = response.json()
    assert list(errors) == [field]
    assert message in errors[field][0]
    assert nothing_written() and queue_capture.sent == []


def test_maximum_amount_follows_the_setting(api, queue_capture, settings):
    settings.ORDER_MAX_AMOUNT = Decimal("500.00")
    response = api.post(ORDERS, {**BODY, "amount": "500.01"}, format="json")
    assert response.json() == {"amount": ["The amount must not be more than 500.00."]}
    assert api.post(ORDERS, {**BODY, "amount": "500.00"}, format="json").status_code == 201


def test_malformed_json_is_400(api, queue_capture):
    response = api.post(ORDERS, '{"order_id": "ord-1", ', content_type="application/json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("JSON parse error")
    assert nothing_written()


def test_a_form_body_is_415(api, queue_capture):
    # The API reads JSON only: a form post is an unsupported media type, not an order.
    response = api.post(
        ORDERS, "order_id=ord-1&amount=5", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 415
    assert nothing_written()


def test_a_json_body_that_is_not_an_object_is_refused(api, queue_capture):
    response = api.post(ORDERS, [BODY], format="json")
    assert response.status_code == 400
    assert response.json() == {
        "non_field_errors": ["Invalid data. Expected a dictionary, but got list."]
    }
    assert nothing_written()


def test_without_a_token_it_is_401(db, queue_capture):
    response = APIClient().post(ORDERS, BODY, format="json")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Token"
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert bad.post(ORDERS, BODY, format="json").status_code == 401
    assert nothing_written()


def test_too_many_requests_is_429(api, queue_capture, monkeypatch):
    # DRF binds the rates at class definition (`THROTTLE_RATES = api_settings...`), so
    # overriding settings would not reach it.
    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "2/minute"})
    codes = [api.get(ORDERS).status_code for _ in range(2)]
    response = api.post(ORDERS, BODY, format="json")
    assert codes == [200, 200] and response.status_code == 429
    assert "Retry-After" in response.headers
    assert nothing_written()


# --- reads ------------------------------------------------------------------------------


def test_list_is_paginated_and_filtered_by_status(api, intake, queue_capture, place_order):
    for amount in ("1.00", "2.00", "3.00"):
        place_order(amount, client=intake)
    Order.objects.filter(order_id="ord-2-00").update(status="failed")

    page = api.get(ORDERS, {"limit": 2}).json()
    assert page["count"] == 3 and page["next"] and page["previous"] is None
    assert [o["order_id"] for o in page["results"]] == ["ord-3-00", "ord-2-00"]

    failed = api.get(ORDERS, {"status": "failed"}).json()
    assert [o["order_id"] for o in failed["results"]] == ["ord-2-00"]
    assert failed["results"][0]["status"] == "failed"

    bad = api.get(ORDERS, {"status": "lost"})
    assert bad.status_code == 400 and list(bad.json()) == ["status"]


@pytest.mark.django_db(transaction=True)  # a request's own transactions, as in production
def test_placing_an_order_costs_nine_statements(api, queue_capture):
    """The intake's statements, every one a round trip to PostgreSQL's server: the token,
    the role's permission, the throttle's history read and its one-statement write, then
    BEGIN, the order naming its run, the run, the client's webhook endpoints, COMMIT
    (with the ORM broker, the task's INSERT too; `queue_capture` stands in for it)."""
    api.post(ORDERS, {**BODY, "order_id": "first"}, format="json")  # the client's throttle row
    with CaptureQueriesContext(connection) as queries:
        response = api.post(ORDERS, BODY, format="json")
    assert response.status_code == 201
    statements = [query["sql"].split(" (")[0] for query in queries]
    assert len(statements) == 9, statements
    assert not any("SAVEPOINT" in sql or sql.startswith("UPDATE") for sql in statements)


def test_list_costs_a_constant_number_of_queries(
    api, intake, queue_capture, place_order, django_assert_max_num_queries
):
    for n in range(5):
        place_order(f"{n + 1}.00", client=intake)
    # 5 for the page, 1 for the client's permission, up to 4 for the throttle's history
    # in the database cache (read; a write in a savepoint inside the test's transaction).
    with django_assert_max_num_queries(10):
        response = api.get(ORDERS)
    assert response.json()["count"] == 5


def test_detail_and_404(api, intake, queue_capture, place_order):
    order = place_order("12.34", client=intake)
    body = api.get(f"{ORDERS}{order.order_id}/").json()
    assert body["order_id"] == "ord-12-34" and body["amount"] == "12.34"
    assert body["run_id"] == str(order.run_id)
    missing = api.get(f"{ORDERS}nope/")
    assert missing.status_code == 404 and missing.json() == {
        "detail": "No Order matches the given query."
    }


def test_unknown_run_is_404(api):
    response = api.get("/api/runs/6f1c1d3e-0000-4000-8000-000000000000/")
    assert response.status_code == 404


# --- in-process runs (the workflow executes in this process) ------------------------------


@pytest.mark.django_db(transaction=True)
def test_run_shows_its_steps_after_the_order_ran(queue_capture):
    api = api_client_for(User.objects.create_user("intake"))
    created = api.post(ORDERS, BODY, format="json").json()
    assert queue_capture.drain() == ["completed"]

    order = api.get(created["links"]["self"]).json()
    assert order["status"] == "completed" and order["email_sent"] is True
    assert order["charge_id"].startswith("pi_sim")

    run = api.get(created["links"]["run"]).json()
    assert run["id"] == created["run_id"] and run["workflow_id"] == "order_processing"
    assert run["status"] == "completed" and run["attempts"] == 1
    assert run["input"]["order_id"] == "ord-1" and run["output"]["email_sent"] is True
    assert "lease_owner" not in run and "error_traceback" not in run
    steps = run["steps"]
    assert [s["position"] for s in steps] == sorted(s["position"] for s in steps)
    charge = next(s for s in steps if s["key"] == "start_order/tool/1/charge_stripe")
    assert charge["kind"] == "tool" and charge["status"] == "completed"
    assert set(steps[0]) == {
        "key", "position", "kind", "status", "input", "output", "error", "attempt", "meta",
        "started_at", "finished_at", "duration_ms",
    }  # fmt: skip
    assert all(s["duration_ms"] >= 0 for s in steps)
    assert run["waits"] == []


@pytest.mark.django_db(transaction=True)
def test_review_decisions(queue_capture, place_order, reviewer, staff_without_permission):
    # The API decides only the reviewer's own orders (staff see the others in the admin).
    order = place_order("2500.00", client=reviewer)
    small = place_order("10.00", client=reviewer)
    assert sorted(queue_capture.drain()) == ["completed", "suspended"]
    url = f"{ORDERS}{order.order_id}/review/"

    suspended = api_client_for(reviewer).get(f"{ORDERS}{order.order_id}/").json()
    assert suspended["status"] == "awaiting_review"
    assert suspended["review"]["state"] == "pending" and suspended["review"]["decided_by"] is None

    denied = api_client_for(staff_without_permission).post(url, {"approved": True}, format="json")
    assert denied.status_code == 403
    assert denied.json() == {"detail": "You may not decide fraud reviews."}

    rita = api_client_for(reviewer)
    assert rita.post(url, {"note": "x"}, format="json").json() == {
        "approved": ["This field is required."]
    }
    decided = rita.post(url, {"approved": True, "note": "known customer"}, format="json")
    assert decided.status_code == 200, decided.json()
    review = decided.json()["review"]
    assert review["state"] == "approved" and review["decided_by"] == "rita"
    assert review["note"] == "known customer" and review["decided_at"]

    assert queue_capture.drain() == ["completed"]
    done = rita.get(f"{ORDERS}{order.order_id}/").json()
    assert done["status"] == "completed" and done["fraud_approved"] is True
    assert done["email_sent"] is True

    run = rita.get(done["links"]["run"]).json()
    [wait] = run["waits"]
    assert wait["key"] == "fraud_review" and wait["status"] == "resumed"
    assert wait["resumed_by"] == "rita" and wait["data"]["amount"] == "2500.00"

    again = rita.post(url, {"approved": False}, format="json")
    assert again.status_code == 409
    assert again.json()["detail"].startswith("The review of order ord-2500-00 was already decided")

    nothing = rita.post(f"{ORDERS}{small.order_id}/review/", {"approved": True}, format="json")
    assert nothing.status_code == 409
    assert nothing.json() == {"detail": "Order ord-10-00 has no fraud review to decide"}

    assert rita.post(f"{ORDERS}nope/review/", {"approved": True}, format="json").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_the_201_says_what_the_fraud_policy_knows_at_intake(queue_capture, settings):
    api = api_client_for(User.objects.create_user("intake"))
    created = api.post(ORDERS, {**BODY, "order_id": "big", "amount": "2500.00"}, format="json")
    assert created.status_code == 201
    body = created.json()
    # Over the threshold from the start; nothing is charged yet, and it says so.
    assert body["fraud_review_required"] is True
    assert (body["status"], body["payment_status"], body["charge_id"]) == ("processing", "none", "")

    assert queue_capture.drain() == ["suspended"]
    later = api.get(body["links"]["self"]).json()
    assert later["fraud_review_required"] is True
    assert (later["status"], later["payment_status"]) == ("awaiting_review", "authorized")

    # The policy's own rule, per currency: 5,000 JPY is no large order.
    settings.ORDER_CURRENCIES = ["usd", "jpy"]
    settings.FRAUD_REVIEW_THRESHOLDS = {"jpy": "150000"}
    yen = {**BODY, "order_id": "yen", "amount": "5000", "currency": "jpy"}
    assert api.post(ORDERS, yen, format="json").json()["fraud_review_required"] is False
    assert api.post(ORDERS, BODY, format="json").json()["fraud_review_required"] is False


# --- OpenAPI ----------------------------------------------------------------------------


def test_schema_is_valid_without_warnings(tmp_path):
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    schema = yaml.safe_load(target.read_text())
    assert set(schema["paths"]) >= {
        "/api/orders/",
        "/api/orders/{order_id}/",
        "/api/orders/{order_id}/review/",
        "/api/runs/{run_id}/",
    }
    create = schema["paths"]["/api/orders/"]["post"]
    assert set(create["responses"]) == {"200", "201", "400", "401", "403", "409", "429"}
    assert [p["name"] for p in create["parameters"]] == ["Idempotency-Key"]
    review = schema["paths"]["/api/orders/{order_id}/review/"]["post"]
    assert {"403", "404", "409"} <= set(review["responses"])


def test_schema_and_docs_are_served(db):
    client = APIClient()
    assert client.get("/api/schema/").status_code == 200
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"drf_spectacular_sidecar/swagger-ui-dist" in docs.content
