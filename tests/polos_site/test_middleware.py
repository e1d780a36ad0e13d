"""A NUL character (issue 18, item 10): PostgreSQL refuses one even in a comparison, so
every lookup by a user's text answered 500 there. Tried at every door, as an attacker
would; run on PostgreSQL (DATABASE_URL) as well as SQLite."""

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from orders.models import Order
from tests.support.api import api_client_for
from workflows.models import WorkflowRun

pytestmark = pytest.mark.django_db

GOOD = {
    "order_id": "ord-1",
    "customer_id": "cus_good",
    "customer_email": "ada@example.com",
    "amount": "250.00",
}
REFUSED = {"detail": "NUL characters are not allowed in a URL or a header."}


@pytest.fixture(autouse=True)
def simulated(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"


@pytest.fixture
def root() -> User:
    return User.objects.create_superuser("root", "root@example.com", "x")


@pytest.fixture
def api(root) -> APIClient:
    return api_client_for(root)


@pytest.fixture
def staff(root) -> Client:
    client = Client()
    client.force_login(root)
    return client


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/orders/x%00/"),
        ("post", "/api/orders/x%00/review/"),
        ("get", "/api/runs/x%00/"),
        ("delete", "/api/webhooks/1%00/"),
        ("post", "/api/webhooks/1%00/rotate-secret/"),
    ],
)
def test_an_api_path_with_a_nul_names_nothing(api, queue_capture, method, path):
    response = getattr(api, method)(path, {"approved": True}, format="json")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


def test_an_order_whose_id_is_a_prefix_is_not_found_either(api, queue_capture):
    assert api.post("/api/orders/", GOOD, format="json").status_code == 201
    response = api.get("/api/orders/ord-1%00/")
    assert response.status_code == 404 and response.json() == {"detail": "Not found."}
    assert api.get("/api/orders/ord-1/").status_code == 200


def test_an_idempotency_key_with_a_nul_is_refused_and_nothing_written(api, queue_capture):
    response = api.post("/api/orders/", GOOD, format="json", headers={"Idempotency-Key": "k\x00"})
    assert response.status_code == 400 and response.json() == REFUSED
    assert not Order.objects.exists() and not WorkflowRun.objects.exists()
    assert queue_capture.sent == []


@pytest.mark.parametrize(
    "url",
    [
        "/api/orders/?status=%00",
        "/api/orders/?limit=%00",
        "/api/webhooks/?x%00=1",
    ],
)
def test_an_api_query_with_a_nul_is_bad_input(api, url):
    response = api.get(url)
    assert response.status_code == 400 and response.json() == REFUSED


@pytest.mark.parametrize(
    "url",
    [
        # the console's search and filters
        "/runs/?q=%00",
        "/runs/?workflow=%00",
        "/runs/?q=order%00processing&status=failed",
        # the admin's searches and list filters, the project's and Django's own
        "/admin/orders/order/?q=%00",
        "/admin/orders/order/?currency=%00",
        "/admin/orders/order/?payment_status=%00",
        "/admin/orders/fraudreview/?q=%00",
        "/admin/orders/stripeevent/?type=%00",
        "/admin/client_webhooks/webhookdelivery/?event_type=%00",
        "/admin/workflows/workflowrun/?workflow_id=%00",
        "/admin/auth/user/?username=%00",
    ],
)
def test_a_staff_page_query_with_a_nul_is_bad_input(staff, url):
    response = staff.get(url)
    assert response.status_code == 400 and response.json() == REFUSED
    # A browser gets Django's own 400 page.
    page = staff.get(url, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 400 and page["Content-Type"].startswith("text/html")


def test_the_console_still_searches(staff):
    assert staff.get("/runs/?q=order_processing").status_code == 200
    assert staff.get("/admin/orders/order/?q=ord-1&currency=usd").status_code == 200


def test_a_token_or_a_session_cookie_with_a_nul_is_bad_input(root):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Token abc\x00def")
    response = api.get("/api/orders/")
    assert response.status_code == 400 and response.json() == REFUSED

    # No NUL byte on the wire (a server would refuse one): the quoted cookie spells it.
    browser = Client(headers={"Cookie": 'sessionid="abcdefgh\\000ijkl"'})
    assert browser.get("/runs/").status_code == 400
