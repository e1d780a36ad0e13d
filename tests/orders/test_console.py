"""The staff console's run page says which order a run is for, and where its money is."""

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def simulated(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"


def test_an_order_runs_page_shows_its_order_and_payment_status(place_order, queue_capture):
    held = place_order("2500.00", order_id="big-1")
    small = place_order("25.00", order_id="small-1")
    queue_capture.drain()
    staff = User.objects.create_user("ops", password="ops-pass-123", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_workflowrun"))
    console = Client()
    console.force_login(staff)

    page = console.get(f"/runs/{held.run_id}/").content.decode()
    assert "big-1" in page and f"/admin/orders/order/{held.pk}/change/" in page
    assert "awaiting_review" in page and "Authorized" in page
    page = console.get(f"/runs/{small.run_id}/").content.decode()
    assert "small-1" in page and "Captured" in page


# --- finding an order's runs, and the deliveries kept apart --------------------------------


@pytest.fixture
def runs_of_two_orders(place_order, queue_capture):
    """Two orders of a client with a webhook endpoint: each has its order run and a
    delivery run (`order.created`), left queued (nothing is sent)."""
    from orders.client_webhooks.models import WebhookEndpoint

    intake = User.objects.create_user("intake")
    WebhookEndpoint.objects.create(
        client=intake, url="https://hooks.example/in", events=["order.created"], secret="s"
    )
    one = place_order("25.00", order_id="find-me-1", customer_id="cus_ada", client=intake)
    two = place_order("30.00", order_id="other-2", customer_id="cus_bob", client=intake)
    return one, two


def operator_console() -> Client:
    staff = User.objects.create_user("ops", password="ops-pass-123", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_workflowrun"))
    console = Client()
    console.force_login(staff)
    return console


def test_the_run_list_finds_an_orders_runs_by_order_id_and_customer_id(runs_of_two_orders):
    from orders.client_webhooks.models import WebhookDelivery

    one, two = runs_of_two_orders
    delivery_run = WebhookDelivery.objects.get(order=one).run_id
    console = operator_console()
    for query in ("find-me-1", "cus_ada"):
        page = console.get("/runs/", {"q": query, "group": "all"}).content.decode()
        assert str(one.run_id) in page and str(delivery_run) in page, query
        assert str(two.run_id) not in page, query
    # The default list keeps the delivery out, the order's run in.
    page = console.get("/runs/", {"q": "find-me-1"}).content.decode()
    assert str(one.run_id) in page and str(delivery_run) not in page


def test_delivery_runs_have_their_own_tab_apart_from_the_order_runs(runs_of_two_orders):
    from orders.client_webhooks.models import WebhookDelivery

    one, two = runs_of_two_orders
    deliveries = [str(r) for r in WebhookDelivery.objects.values_list("run_id", flat=True)]
    console = operator_console()
    main = console.get("/runs/").content.decode()
    assert str(one.run_id) in main and str(two.run_id) in main
    assert not any(run_id in main for run_id in deliveries)
    assert 'data-group="deliveries"' in main and "Webhook deliveries" in main
    tab = console.get("/runs/", {"group": "deliveries"}).content.decode()
    assert all(run_id in tab for run_id in deliveries)
    assert str(one.run_id) not in tab
    every = console.get("/runs/", {"group": "all"}).content.decode()
    assert all(r in every for r in [*deliveries, str(one.run_id), str(two.run_id)])
    # Asking for the workflow by id shows its runs whatever the tab.
    by_id = console.get("/runs/", {"workflow": "webhook_delivery"}).content.decode()
    assert all(run_id in by_id for run_id in deliveries)


def test_runs_command_lists_deliveries_only_when_asked(runs_of_two_orders):
    from io import StringIO

    from django.core.management import CommandError, call_command

    def runs(*args: str) -> str:
        out = StringIO()
        call_command("runs", *args, stdout=out)
        return out.getvalue()

    assert "webhook_delivery" not in runs() and "order_processing" in runs()
    only = runs("--group", "deliveries")
    assert "webhook_delivery" in only and "order_processing" not in only
    assert "webhook_delivery" in runs("--group", "all")
    with pytest.raises(CommandError, match="Unknown group 'nope'; valid: deliveries, all"):
        runs("--group", "nope")


def test_ops_status_counts_delivery_runs_on_their_own_line(runs_of_two_orders):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("ops_status", stdout=out)
    lines = out.getvalue().splitlines()
    runs_line = next(line for line in lines if line.startswith("runs: "))
    deliveries_line = next(line for line in lines if line.startswith("Webhook deliveries runs: "))
    # Two order runs and two delivery runs, queued: counted apart, not as "pending 4".
    assert "pending 2" in runs_line and "pending 2" in deliveries_line
