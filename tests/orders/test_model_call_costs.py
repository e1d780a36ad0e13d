"""What a model call costs an order on the real path (the openai SDK against the local
model server, the stripe SDK against the local Stripe server), counted, not timed: the
cluster-wide cap's database statements and the model clients made must not grow with the
number of model calls."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from orders.models import Order
from tests.support.openai_server import reply_tool_calls
from tests.workflows.agents.test_provider_reuse import clients_made  # noqa: F401 (a fixture)
from workflows.engine.limits import slots_give_back, slots_take
from workflows.models import ConcurrencySlot

from .test_flow_openai import answer, charge, run_order, send_email

pytestmark = pytest.mark.django_db(transaction=True)

SLOT_TABLE = ConcurrencySlot._meta.db_table


def order_costs(
    openai_server, place_order, queue_capture, made, *, amount: str, detours: int
) -> dict[str, int]:
    """Place and run one small order whose model asks `detours` times for a tool that
    does not exist (one more model call each) before it charges and confirms."""
    order_id = f"ord-{amount.replace('.', '-')}"
    detour = reply_tool_calls([("lookup_loyalty_points", {"customer_id": "cus_good"})])
    openai_server.script(
        [detour] * detours + [charge(amount), send_email(order_id, amount), answer("email")]
    )
    calls_before, clients_before = len(openai_server.chat_requests), len(made)
    with CaptureQueriesContext(connection) as queries:
        order = run_order(place_order, queue_capture, amount)
    assert Order.objects.get(pk=order.pk).status == "completed"
    return {
        "model_calls": len(openai_server.chat_requests) - calls_before,
        "cap_statements": sum(SLOT_TABLE in q["sql"] for q in queries.captured_queries),
        "statements": len(queries.captured_queries),
        "clients": len(made) - clients_before,
    }


def test_model_calls_cost_the_cap_no_statement_and_share_one_client(
    openai_server,
    stripe_server,
    place_order,
    queue_capture,
    request,
    settings,
):
    made = request.getfixturevalue("clients_made")  # imported above
    settings.WORKFLOWS_MODEL_CONCURRENCY = {"openai": 100}
    # The cap's rows exist, as after a deployment's first call.
    slots_take(resource="openai:gpt-4o-mini", limit=100, holder="first", count=1)
    slots_give_back(holder="first")
    few = order_costs(openai_server, place_order, queue_capture, made, amount="250.00", detours=0)
    many = order_costs(openai_server, place_order, queue_capture, made, amount="260.00", detours=3)
    assert (few["model_calls"], many["model_calls"]) == (3, 6)
    # The cap: a block taken once per process and given back, whatever the calls.
    assert 0 < few["cap_statements"] == many["cap_statements"]
    # One client per provider configuration on the loop, however many calls.
    assert few["clients"] == many["clients"] == 1
    # The whole order, intake to confirmation: each statement is a round trip to
    # PostgreSQL's server (bench/README.md, "Ninth pass"). Lower it here when it falls.
    assert few["statements"] <= 38
    print(f"per order: {few} / {many}")  # the figures, with -s
