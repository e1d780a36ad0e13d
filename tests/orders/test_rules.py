"""The order rules (issue 10, defects 1, 2 and 6), tried at every door as an attacker
would: the API, the console's start form, `process_order`, and `order_create` itself.

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

from orders.models import Order
from orders.schemas import OrderPayload
from orders.services import order_create
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
]
IDS = [f"{field}={value[:12]!r}" for field, value, _ in HOSTILE]


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


@pytest.mark.parametrize(("field", "value", "message"), HOSTILE, ids=IDS)
def test_api_refuses_with_a_field_error(api, queue_capture, field, value, message):
    response = api.post("/api/orders/", {**GOOD, field: value}, format="json")
    assert response.status_code == 400, response.content
    errors = response.json()
    assert list(errors) == [field]
    assert message in errors[field][0]
    assert nothing_written() and queue_capture.sent == []


@pytest.mark.parametrize(("field", "value", "message"), HOSTILE, ids=IDS)
def test_console_refuses_with_a_form_error(operator, queue_capture, field, value, message):
    response = operator.post(START_URL, {"payload": json.dumps({**GOOD, field: value})})
    assert response.status_code == 200
    form = response.context["form"]
    assert field in form.error_fields
    assert any(loc == field and message in msg for loc, msg in form.field_errors)
    assert nothing_written() and queue_capture.sent == []


@pytest.mark.parametrize(("field", "value", "message"), HOSTILE, ids=IDS)
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
