"""Operators' views of the service: `ops_status` and `/healthz`."""

from io import StringIO

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def simulated(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"


def test_ops_status_shows_queue_runs_and_oldest_review(queue_capture, place_order):
    place_order("30.00")
    place_order("2500.00")
    queue_capture.drain()
    place_order("40.00")  # queued, not yet executed

    out = StringIO()
    call_command("ops_status", stdout=out)
    text = out.getvalue()
    assert "pending 1" in text and "completed 1" in text and "suspended 1" in text
    assert "1 pending; oldest is order ord-2500-00" in text and "left" in text


def test_healthz_answers_without_login(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "up"}
