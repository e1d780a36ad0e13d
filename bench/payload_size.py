"""Bytes of step payload per order: N orders through the simulated order flow, in-process
on a temp SQLite database, then the JSON of every step's input, output and meta (and of
every wait's data and decision) summed and divided by N.

    .venv/bin/python -m bench.payload_size            # --orders 100
    .venv/bin/python -m bench.payload_size --orders 200 --json

The mix is the other order benchmarks' (`common.order_mix`): mostly small orders, one in
ten over the review threshold (approved by a reviewer here, so that its run finishes),
one in forty declined. What is measured is what the engine stores, as the database
stores JSON (compact, as Django's JSONField writes it).
"""

import argparse
import json
import sys
from decimal import Decimal
from typing import Any

from bench.common import BenchDatabase, BenchError, migrate, order_mix, setup_django
from tests.support.cluster import service_env


def _size(value: Any) -> int:
    return 0 if value is None else len(json.dumps(value).encode())


def measure(orders: int) -> dict[str, Any]:
    """Run the orders and return the figures (after `django.setup()`)."""
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.db.models import Count

    from orders.models import FraudReview, Order
    from orders.schemas import OrderPayload
    from orders.services.intake import order_create
    from orders.services.reviews import review_decide
    from workflows.engine import queue
    from workflows.engine.executor import run_execute
    from workflows.models import StepRecord, Wait

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    sent: list[str] = []
    queue._send = sent.append  # in-process: no broker, each segment executed below

    def drain() -> None:
        while sent:
            run_execute(sent.pop(0))

    reviewer = User.objects.create_superuser("bench-reviewer", "reviewer@example.com", "x")
    for payload in order_mix(orders, "size"):
        order_create(
            client=None,
            payload=OrderPayload(
                order_id=payload["order_id"],
                customer_id=payload["customer_id"],
                customer_email=payload["customer_email"],
                amount=Decimal(payload["amount"]),
            ),
        )
        drain()
    for review in FraudReview.objects.pending():
        order = Order.objects.get(run_id=review.run_id)
        review_decide(order=order, approved=True, by=reviewer, note="known customer")
        drain()

    step_bytes = {"input": 0, "output": 0, "meta": 0}
    by_kind: dict[str, int] = {}
    for step in StepRecord.objects.iterator():
        sizes = (_size(step.input), _size(step.output), _size(step.meta))
        for name, size in zip(step_bytes, sizes, strict=True):
            step_bytes[name] += size
        by_kind[step.kind] = by_kind.get(step.kind, 0) + sum(sizes)
    wait_bytes = sum(_size(w.data) + _size(w.resume_data) for w in Wait.objects.iterator())
    total = sum(step_bytes.values()) + wait_bytes
    statuses = dict(Order.objects.values_list("status").annotate(n=Count("id")))
    return {
        "orders": orders,
        "statuses": statuses,
        "steps": StepRecord.objects.count(),
        "bytes_per_order": round(total / orders),
        "step_input_per_order": round(step_bytes["input"] / orders),
        "step_output_per_order": round(step_bytes["output"] / orders),
        "step_meta_per_order": round(step_bytes["meta"] / orders),
        "wait_per_order": round(wait_bytes / orders),
        "by_kind_per_order": {k: round(v / orders) for k, v in sorted(by_kind.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.payload_size", description=__doc__)
    parser.add_argument("--orders", type=int, default=100, help="orders to run (default 100)")
    parser.add_argument("--json", action="store_true", help="one JSON line")
    args = parser.parse_args(argv)
    if args.orders < 1:
        parser.error("--orders must be at least 1")
    database = BenchDatabase("", "bench-payload")
    try:
        env = service_env(
            database.create(),
            settings={
                "LLM_PROVIDER": "simulated",
                "PAYMENT_GATEWAY": "simulated",
                "EMAIL_HOST": None,
                "REDIS_URL": None,
                "LOG_LEVEL": "WARNING",
                "DJANGO_SETTINGS_MODULE": "polos_site.settings",
            },
        )
        migrate(env)
        setup_django(env)
        figures = measure(args.orders)
    except BenchError as exc:
        print(f"payload_size: {exc}", file=sys.stderr)
        return 2
    finally:
        if "django.db" in sys.modules:
            sys.modules["django.db"].connections.close_all()
        database.drop()
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{figures['orders']} orders {figures['statuses']}, {figures['steps']} steps")
        print(f"step payload: {figures['bytes_per_order']} bytes per order")
        print(
            f"  input {figures['step_input_per_order']}, output "
            f"{figures['step_output_per_order']}, meta {figures['step_meta_per_order']}, "
            f"waits {figures['wait_per_order']}"
        )
        print(f"  by step kind: {figures['by_kind_per_order']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
