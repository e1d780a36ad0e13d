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
