"""The order rules (issue 10, defects 1, 2 and 6; issue 18, item 11), tried at every door
as an attacker would: the API, the console's start form, `process_order`, and
`order_create` itself; a review's note at every door that decides one.

Each door must refuse the same hostile values, answer in its own way (400 with field
errors, a form error, a CommandError, a ValidationError) and write nothing.
"""

import json
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from pydantic import ValidationError
from rest_framework.test import APIClient

from orders.models import FraudReview, Order, ReviewState
from orders.rules import OrderRuleError
from orders.schemas import OrderPayload
from orders.services.intake import order_create
from orders.services.reviews import ReviewError, review_decide
from tests.support.api import api_client_for
from workflows.models import WorkflowRun

pytestmark = pytest.mark.django_db

GOOD = {
    "order_id": "ord-1",
    "customer_id": "cus_good",
    "customer_email": "ada@example.com",
    "amount": "250.00",
    "currency": "usd",
}
START_URL = reverse("workflows:workflow_start", args=["order_processing"])

# (field, hostile value, part of the message)
HOSTILE = [
    ("customer_id", "cus_1\r\n2026-01-01 INFO order approved", "Control characters"),
    ("customer_id", "cus_1\n", "Control characters"),
    ("customer_id", "\x1b[31mcus_red\x1b[0m", "Control characters"),
    ("customer_id", "cus\x00", "Control characters"),
    ("customer_id", "cus\u2028forged", "Control characters"),
    ("customer_id", "c" * 256, "no more than 255 characters"),
    ("order_id", "ord\r\n1", "Control characters"),
    ("order_id", "a/b", "Use 1 to 64"),
    ("order_id", "<script>alert(1)</script>", "Use 1 to 64"),
    ("order_id", "o" * 300, "no more than 64 characters"),
    ("customer_email", "ada@example.com\r\nBcc: all@example.com", "Control characters"),
    ("customer_email", "not-an-email", "Enter a valid email address."),
    ("currency", "XXX-not-a-currency", "not a three-letter currency code"),
    ("currency", "xyz", "Unknown currency 'xyz'"),
    ("currency", "kwd", "three decimals"),
    ("amount", "999999999999", "must not be more than 100000.00"),
    ("amount", "0.10", "must be at least 0.50"),
    ("amount", "10.005", "no more than 2 decimal places"),
    ("amount", "NaN", "A valid number is required"),
    ("amount", "-5", "must be greater than 0"),
    # Issue 18, item 11: loose text.
    ("customer_id", "   ", "may not be blank"),
    ("customer_id", "\u00a0\u3000", "may not be blank"),
    ("order_id", ".", "only of dots"),
    ("order_id", "..", "only of dots"),
    ("order_id", "...", "only of dots"),
    ("amount", "49.999999999999999999", "no more than 2 decimal places"),
    ("amount", "0.49999999999999999999", "must be at least 0.50"),
]
# Spellings of a number that only a text door (API, console, command) can carry: a
# Python caller of `order_create` passes a Decimal, already a number.
LOOSE_NUMBERS = [
    ("amount", "1_000", "A valid number is required"),
    ("amount", "\uff11\uff10\uff10\uff10", "A valid number is required"),  # full-width 1000
    ("amount", "\u0661\u0660\u0660\u0660", "A valid number is required"),  # Arabic-Indic 1000
    ("amount", "1e3", "A valid number is required"),
]
IDS = [f"{field}={value[:12]!r}" for field, value, _ in HOSTILE]
TEXT_DOORS = HOSTILE + LOOSE_NUMBERS
TEXT_IDS = [f"{field}={value[:12]!r}" for field, value, _ in TEXT_DOORS]


@pytest.fixture(autouse=True)
def simulated(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    settings.ORDER_CURRENCIES = ["usd", "eur", "gbp", "kwd"]  # kwd: refused all the same


def nothing_written() -> bool:
    return not Order.objects.exists() and not WorkflowRun.objects.exists()


@pytest.fixture
def api() -> APIClient:
    return api_client_for(User.objects.create_user("client", password="x"))


@pytest.fixture
def operator() -> Client:
    """Staff holding `workflows.start_run` (and the console's `view_workflowrun`)."""
    user = User.objects.create_user("olga", password="x", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["start_run", "view_workflowrun"])
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize(("field", "value", "message"), TEXT_DOORS, ids=TEXT_IDS)
def test_api_refuses_with_a_field_error(api, queue_capture, field, value, message):
    response = api.post("/api/orders/", {**GOOD, field: value}, format="json")
    assert response.status_code == 400, response.content
    errors = response.json()
    assert list(errors) == [field]
    assert message in errors[field][0]
    assert nothing_written() and queue_capture.sent == []


@pytest.mark.parametrize(("field", "value", "message"), TEXT_DOORS, ids=TEXT_IDS)
def test_console_refuses_with_a_form_error(operator, queue_capture, field, value, message):
    response = operator.post(START_URL, {"payload": json.dumps({**GOOD, field: value})})
    assert response.status_code == 200
    form = response.context["form"]
    assert field in form.error_fields
    assert any(loc == field and message in msg for loc, msg in form.field_errors)
    assert nothing_written() and queue_capture.sent == []


@pytest.mark.parametrize(("field", "value", "message"), TEXT_DOORS, ids=TEXT_IDS)
def test_process_order_refuses_with_a_command_error(queue_capture, field, value, message):
    body = {**GOOD, field: value}
    with pytest.raises(CommandError, match=r"^Invalid order: ") as refused:
        call_command(
            "process_order",
            f"--order-id={body['order_id']}",
            f"--customer-id={body['customer_id']}",
            f"--email={body['customer_email']}",
            f"--amount={body['amount']}",
            f"--currency={body['currency']}",
        )
    assert message in str(refused.value)
    assert nothing_written() and queue_capture.sent == []


@pytest.mark.parametrize(("field", "value", "message"), HOSTILE, ids=IDS)
def test_order_create_refuses_a_payload_that_skipped_validation(
    queue_capture, field, value, message
):
    # model_construct skips validation, as a careless caller might; order_create may not.
    bad = Decimal(value) if field == "amount" else value
    payload = OrderPayload.model_construct(
        **{**GOOD, "amount": Decimal(GOOD["amount"]), field: bad}
    )
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        order_create(payload=payload)
    assert nothing_written() and queue_capture.sent == []


def test_every_door_accepts_the_good_order(api, operator, queue_capture):
    assert api.post("/api/orders/", GOOD, format="json").status_code == 201
    response = operator.post(START_URL, {"payload": json.dumps({**GOOD, "order_id": "ord-2"})})
    assert response.status_code == 302
    call_command(
        "process_order",
        "--order-id=ord-3",
        "--customer-id=cus_good",
        "--email=ada@example.com",
        "--amount=250.00",
    )
    order_create(payload=OrderPayload(**{**GOOD, "order_id": "ord-4"}))
    assert WorkflowRun.objects.count() == 4 and Order.objects.count() == 3  # +1 on its run


def test_amounts_are_kept_in_the_currencys_decimals(api, queue_capture):
    response = api.post("/api/orders/", {**GOOD, "amount": 250, "currency": "USD"}, format="json")
    assert response.status_code == 201
    assert response.json()["amount"] == "250.00" and response.json()["currency"] == "usd"
    # 250 and 250.00 are the same request.
    again = api.post("/api/orders/", {**GOOD, "amount": "250.00"}, format="json")
    assert again.status_code == 200


# --- defect 1: starting runs needs its own permission -----------------------------------


def test_staff_without_the_start_permission_cannot_start_an_order(queue_capture):
    sam = User.objects.create_user("sam", password="x", is_staff=True)
    sam.user_permissions.add(Permission.objects.get(codename="view_workflowrun"))
    client = Client()
    client.force_login(sam)
    assert client.get(START_URL).status_code == 403
    response = client.post(START_URL, {"payload": json.dumps(GOOD)})
    assert response.status_code == 403
    assert nothing_written() and queue_capture.sent == []


# --- defect 2: a bad row written before the rules does not break the list pages ---------


def legacy_order(order_id: str, **fields) -> Order:
    """A row as the old console could write it, straight through the ORM."""
    defaults = {
        "customer_id": "cus_old",
        "customer_email": "old@example.com",
        "amount": Decimal("10.00"),
        "currency": "usd",
        "request_fingerprint": "x",
    }
    return Order.objects.create(order_id=order_id, **{**defaults, **fields})


def test_list_pages_survive_an_order_id_with_a_slash(api, queue_capture):
    user = User.objects.get(username="client")
    fields = {"client": user} if hasattr(Order, "client") else {}
    legacy_order("a/b", **fields)
    legacy_order("odd:ok", currency="xxx", **fields)  # a currency the service cannot handle

    listing = api.get("/api/orders/")
    assert listing.status_code == 200, listing.content
    ids = {o["order_id"] for o in listing.json()["results"]}
    assert ids == {"a/b", "odd:ok"}

    admin = Client()
    admin.force_login(User.objects.create_superuser("root", "root@example.com", "x"))
    page = admin.get(reverse("admin:orders_order_changelist"))
    assert page.status_code == 200 and "a/b" in page.content.decode()
    assert admin.get("/runs/").status_code == 200


def test_the_database_refuses_an_amount_its_column_cannot_hold():
    """The last line behind the rules: such a row made every read of the list fail."""
    from django.db import DataError, IntegrityError, transaction

    # SQLite: the check constraint (IntegrityError); PostgreSQL: the column (DataError).
    with pytest.raises((IntegrityError, DataError)), transaction.atomic():
        Order.objects.create(
            order_id="too-big",
            customer_id="cus_1",
            customer_email="ada@example.com",
            amount=Decimal("999999999999"),
            currency="usd",
            request_fingerprint="x",
        )
    assert not Order.objects.filter(order_id="too-big").exists()


# --- issue 18, item 11: JSON numbers exactly, keys and notes as text ----------------------

# A JSON number, as a client writes it: read as a float, the first was charged as 50.00
# and the second passed the minimum.
INEXACT_NUMBERS = [
    ("49.999999999999999999", "Ensure that there are no more than 2 decimal places."),
    ("0.49999999999999999999", "The amount must be at least 0.50 (USD)."),
]


def json_body(amount: str) -> str:
    """GOOD as a JSON text whose amount is the JSON number `amount`, digits as written."""
    return json.dumps({**GOOD, "amount": "AMOUNT"}).replace('"AMOUNT"', amount)


@pytest.mark.parametrize(("amount", "message"), INEXACT_NUMBERS)
def test_api_reads_a_json_number_exactly(api, queue_capture, amount, message):
    response = api.post("/api/orders/", json_body(amount), content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json() == {"amount": [message]}
    assert nothing_written() and queue_capture.sent == []


@pytest.mark.parametrize(("amount", "message"), INEXACT_NUMBERS)
def test_console_reads_a_json_number_exactly(operator, queue_capture, amount, message):
    response = operator.post(START_URL, {"payload": json_body(amount)})
    assert response.status_code == 200
    assert ("amount", message) in response.context["form"].field_errors
    assert nothing_written() and queue_capture.sent == []


def test_a_json_number_is_charged_as_written(api, queue_capture):
    response = api.post("/api/orders/", json_body("49.99"), content_type="application/json")
    assert response.status_code == 201, response.content
    assert response.json()["amount"] == "49.99"
    assert Order.objects.get().amount == Decimal("49.99")


HOSTILE_KEYS = [
    ("key\x1b[31m", "Control characters"),
    ("key\tone", "Control characters"),
    ("key\u202eeno", "Control characters"),  # a bidi override
    ("k" * 256, "no more than 255 characters"),
]


@pytest.mark.parametrize(("key", "message"), HOSTILE_KEYS)
def test_api_refuses_a_hostile_idempotency_key(api, queue_capture, key, message):
    response = api.post("/api/orders/", GOOD, format="json", headers={"Idempotency-Key": key})
    assert response.status_code == 400, response.content
    errors = response.json()
    assert list(errors) == ["Idempotency-Key"] and message in errors["Idempotency-Key"][0]
    assert nothing_written() and queue_capture.sent == []


@pytest.mark.parametrize(("key", "message"), [*HOSTILE_KEYS, ("k\x00", "Control characters")])
def test_order_create_refuses_a_hostile_idempotency_key(queue_capture, key, message):
    with pytest.raises(OrderRuleError, match=message):
        order_create(payload=OrderPayload(**GOOD), idempotency_key=key)
    assert nothing_written() and queue_capture.sent == []


HOSTILE_NOTES = ["known\r\ncustomer", "known\ncustomer", "\x1b[31mred", "ok\x00", "a\u2028b"]


@pytest.fixture
def pending_review(queue_capture, place_order, reviewer):
    """The reviewer's own 2500.00 order, suspended at its fraud review."""
    order = place_order("2500.00", client=reviewer)
    assert queue_capture.drain() == ["suspended"]
    order.refresh_from_db()
    return order, FraudReview.objects.get(run_id=order.run_id)


def still_pending(review: FraudReview, queue_capture) -> bool:
    review.refresh_from_db()
    return review.state == ReviewState.PENDING and queue_capture.sent == []


@pytest.mark.parametrize("note", HOSTILE_NOTES)
def test_every_review_door_refuses_a_note_with_control_characters(
    pending_review, reviewer, queue_capture, note
):
    order, review = pending_review
    refused = "Control characters (line breaks, tabs, escapes, NUL...) are not allowed."

    response = api_client_for(reviewer).post(
        f"/api/orders/{order.order_id}/review/", {"approved": True, "note": note}, format="json"
    )
    assert response.status_code == 400, response.content
    assert response.json() == {"note": [refused]}
    assert still_pending(review, queue_capture)

    admin = Client()
    admin.force_login(reviewer)
    button = admin.post(
        reverse("admin:orders_fraudreview_decide", args=[review.pk]),
        {"decision": "approve", "note": note},
        follow=True,
    )
    assert [str(m) for m in button.context["messages"]] == [f"Note refused: {refused}"]
    assert still_pending(review, queue_capture)

    action = admin.post(
        reverse("admin:orders_fraudreview_changelist"),
        {"action": "approve_selected", "_selected_action": review.pk, "note": note, "post": "yes"},
        follow=True,
    )
    assert [str(m) for m in action.context["messages"]] == [
        f"Note refused: {refused} Nothing was decided."
    ]
    assert still_pending(review, queue_capture)

    if "\x00" not in note:  # a command line cannot hold a NUL
        with pytest.raises(CommandError, match=r"^Note refused: Control characters"):
            call_command("review", order.order_id, "--approve", "--user", "rita", "--note", note)
        assert still_pending(review, queue_capture)

    with pytest.raises(ReviewError, match=r"^Note refused: Control characters"):
        review_decide(order=order, approved=True, by=reviewer, note=note)
    assert still_pending(review, queue_capture)


def test_a_note_keeps_its_text_without_surrounding_blanks(pending_review, reviewer):
    order, review = pending_review
    response = api_client_for(reviewer).post(
        f"/api/orders/{order.order_id}/review/",
        {"approved": True, "note": "  known customer \t"},
        format="json",
    )
    assert response.status_code == 200, response.content
    review.refresh_from_db()
    assert review.state == ReviewState.APPROVED and review.note == "known customer"
