"""What one model call, one charge, one order read and one update cost in CPU, each way
we tried.

    python -m bench.call_costs [--calls N=1000] [--in-flight C=100] [--json]

The per-call figures behind the choices in bench/README.md ("Third pass"), each measured
as this process's CPU time (`time.process_time`) over many calls:

- **model call**: the `openai` SDK's post to the local model server (bench/local_servers,
  its own process, answering after 0.2 s so that C calls are in flight), through the
  SDK's httpx transport or its aiohttp one, the answer built into `ChatCompletion` or
  read as JSON (`cast_to=dict`);
- **charge**: a customer GET and a PaymentIntent create (what a charge sends) with the
  `stripe` SDK against the local Stripe server, from 6 threads (a worker's sync pool),
  through `requests` (as the SDK's default client, the environment read once) or
  through `orders.stripe_transport.Urllib3Client`;
- **read**: one row by a unique field through the ORM (`get`, `refresh_from_db`) or a
  `workflows.engine.compiled_queries.CompiledRead`, on a temp SQLite database;
- **update**: a run's conditional move (by key, lease and status, as a transition
  writes it) and a confirmation's sent mark through the ORM (`filter().update()`,
  `save(update_fields=...)`) or a `CompiledUpdate`, on the same database.
"""

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from bench.common import (
    BenchDatabase,
    make_logger,
    migrate,
    render_table,
    run_reporting,
    setup_django,
)
from bench.local_servers import OPENAI_KEY, STRIPE_KEY, LocalServer
from tests.support.cluster import service_env

PROG = "bench.call_costs"
log = make_logger("call_costs")
CHARGE_THREADS = 6
# The report's sections, as its table names them.
LABELS = {
    "model call ms": "model call (ms)",
    "charge ms": "charge (ms)",
    "read us": "read (µs)",
    "update us": "update (µs)",
}
MESSAGES = [
    {"role": "system", "content": "You process orders: charge, then confirm by email. " * 20},
    {"role": "user", "content": "Order ord-1 for cus_good: 250.00 USD, ada@example.com"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{n}",
            "description": "A tool of the order agent's size. " * 4,
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}},
                "required": ["order_id"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    }
    for n in range(3)
]


def model_call_ms(
    base_url: str, *, transport: str, answer: str, calls: int, in_flight: int
) -> float:
    import openai
    from openai._base_client import make_request_options
    from openai.types.chat import ChatCompletion

    async def measure() -> float:
        http_client = openai.DefaultAioHttpClient() if transport == "aiohttp" else None
        client = openai.AsyncOpenAI(api_key=OPENAI_KEY, base_url=base_url, http_client=http_client)
        gate = asyncio.Semaphore(in_flight)
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "tools": TOOLS}
        cast_to: Any = dict if answer == "json" else ChatCompletion

        async def one() -> None:
            async with gate:
                await client.post(
                    "/chat/completions",
                    body=body,
                    cast_to=cast_to,
                    options=make_request_options(security={"bearer_auth": True}),
                )

        try:
            await asyncio.gather(*(one() for _ in range(in_flight)))  # connections opened
            started = time.process_time()
            await asyncio.gather(*(one() for _ in range(calls)))
            return (time.process_time() - started) * 1000 / calls
        finally:
            await client.close()

    return asyncio.run(measure())


def charge_ms(base_url: str, *, transport: str, charges: int) -> float:
    import requests
    import stripe

    from orders.stripe_transport import Urllib3Client

    if transport == "urllib3":
        http_client: stripe.HTTPClient = Urllib3Client(base_url=base_url)
    else:
        session = requests.Session()
        session.trust_env = False
        http_client = stripe.RequestsClient(session=session)
    client = stripe.StripeClient(
        STRIPE_KEY, http_client=http_client, base_addresses={"api": base_url}
    )

    def charge(n: int) -> None:
        customer = client.v1.customers.retrieve("cus_good")
        card = customer["invoice_settings"]["default_payment_method"]
        client.v1.payment_intents.create(
            params={
                "amount": 25000,
                "currency": "usd",
                "customer": "cus_good",
                "payment_method": card,
                "confirm": True,
                "off_session": True,
            },
            options={"idempotency_key": f"{transport}-{n}-{time.monotonic_ns()}"},
        )

    for n in range(CHARGE_THREADS):
        charge(n)
    each = charges // CHARGE_THREADS

    def charges_of(thread: int) -> None:
        for n in range(each):
            charge(thread * each + n)

    threads = [threading.Thread(target=charges_of, args=(k,)) for k in range(CHARGE_THREADS)]
    started = time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return (time.process_time() - started) * 1000 / (each * CHARGE_THREADS)


def per_call_us(call: Callable[[], object], calls: int) -> float:
    """CPU µs per call of `call`, after one call to warm it."""
    call()
    started = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - started) * 1_000_000 / calls


def reads_us(reads: int) -> dict[str, float]:
    from orders.models import Order
    from workflows.engine.compiled_queries import CompiledRead
    from workflows.models import WorkflowRun

    run = WorkflowRun.objects.create(workflow_id="order_processing", input={})
    order = Order.objects.create(
        order_id="ord-cost",
        customer_id="cus_good",
        customer_email="ada@example.com",
        amount=Decimal("250.00"),
        run=run,
    )
    order_by_run = CompiledRead(Order, "run_id")
    order_by_pk = CompiledRead(Order, "pk")
    run_by_id = CompiledRead(WorkflowRun, "pk")
    return {
        "Order by run: Order.objects.get": per_call_us(
            lambda: Order.objects.get(run_id=run.pk), reads
        ),
        "Order by run: CompiledRead": per_call_us(lambda: order_by_run.get(run.pk), reads),
        "Order: refresh_from_db": per_call_us(order.refresh_from_db, reads),
        "Order: CompiledRead.refresh": per_call_us(lambda: order_by_pk.refresh(order), reads),
        "WorkflowRun: objects.get": per_call_us(lambda: WorkflowRun.objects.get(pk=run.pk), reads),
        "WorkflowRun: CompiledRead": per_call_us(lambda: run_by_id.get(run.pk), reads),
    }


def updates_us(updates: int) -> dict[str, float]:
    from django.db.models import Q
    from django.utils import timezone

    from orders.models import EmailRecord, Order
    from workflows.engine.compiled_queries import CompiledUpdate
    from workflows.models import RunStatus, WorkflowRun

    now = timezone.now()
    run = WorkflowRun.objects.create(
        workflow_id="order_processing", input={}, status=RunStatus.RUNNING, lease_owner="w"
    )
    order = Order.objects.get(order_id="ord-cost")
    record = EmailRecord.objects.create(order=order, kind="confirmation", recipient="a@b.c")
    moves = Q(status__in=[RunStatus.RUNNING, RunStatus.PENDING])
    move = {"status": RunStatus.RUNNING, "updated_at": now, "lease_expires_at": None}
    compiled_move = CompiledUpdate(WorkflowRun, ["pk", "lease_owner"], where=moves)
    sent_mark = CompiledUpdate(EmailRecord, ["pk"])
    return {
        "run move: filter().update()": per_call_us(
            lambda: WorkflowRun.objects.filter(moves, pk=run.pk, lease_owner="w").update(**move),
            updates,
        ),
        "run move: CompiledUpdate": per_call_us(
            lambda: compiled_move.update(run.pk, "w", **move), updates
        ),
        "sent mark: save(update_fields)": per_call_us(
            lambda: record.save(update_fields=["status", "sent_at"]), updates
        ),
        "sent mark: CompiledUpdate": per_call_us(
            lambda: sent_mark.update(record.pk, status=record.status, sent_at=now), updates
        ),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    database = BenchDatabase("sqlite:///", name="bench_call_costs")
    servers: list[LocalServer] = []
    try:
        env = service_env(database.create(), workers=1, production=True)
        log("migrating")
        migrate(env)
        model = LocalServer("openai", env, latency=0.2).start()
        stripe_server = LocalServer("stripe", env).start()
        servers += [model, stripe_server]
        setup_django(env)
        report: dict[str, Any] = {"model call ms": {}, "charge ms": {}}
        for transport in ("httpx", "aiohttp"):
            for answer in ("ChatCompletion", "json"):
                log(f"model calls: {transport}, answer as {answer}")
                report["model call ms"][f"{transport}, {answer}"] = model_call_ms(
                    f"http://127.0.0.1:{model.port}/v1",
                    transport=transport,
                    answer=answer,
                    calls=args.calls,
                    in_flight=args.in_flight,
                )
        for transport in ("requests", "urllib3"):
            log(f"charges: {transport}")
            report["charge ms"][transport] = charge_ms(
                f"http://127.0.0.1:{stripe_server.port}", transport=transport, charges=args.calls
            )
        log("order reads")
        report["read us"] = reads_us(args.calls * 3)
        log("updates")
        report["update us"] = updates_us(args.calls * 3)
        return report
    finally:
        for server in servers:
            server.stop()
        database.drop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="model calls and charges")
    parser.add_argument("--in-flight", type=int, default=100, help="model calls at once")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    if args.calls < CHARGE_THREADS or args.in_flight < 1:
        parser.error(f"--calls must be at least {CHARGE_THREADS}, --in-flight at least 1")

    def work() -> int:
        report = measure(args)
        if args.json:
            print(json.dumps(report, sort_keys=True))
            return 0
        rows = [
            [LABELS[kind], way, f"{value:.2f}"]
            for kind in LABELS
            for way, value in report[kind].items()
        ]
        print(render_table(["what", "how", "CPU each"], rows))
        return 0

    return run_reporting(PROG, log, work)


if __name__ == "__main__":
    sys.exit(main())
