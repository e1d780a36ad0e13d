"""How long `manage.py replay_check` takes over N live runs of the order workflow.

    python -m bench.replay [--runs N=1000] [--database-url postgres://...] [--json]

Creates its own database (a temp SQLite file, or `bench_replay` on the PostgreSQL server
of `--database-url`, dropped at the end), migrates it, then places N orders over the
fraud threshold with the simulated model and gateway and executes each in-process until
it suspends at its fraud review: N live runs of about 12 recorded steps each (the agent's
model and tool calls included). It then times `runs_replay_check()` over them, three
times, and counts its SQL statements.
"""

import argparse
import json
import statistics
import sys
import time
from decimal import Decimal
from typing import Any

from bench.common import BenchDatabase, BenchError, make_logger, migrate, setup_django
from tests.support.cluster import service_env

PROG = "bench.replay"
log = make_logger("replay")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="live runs to replay")
    parser.add_argument("--database-url", default="", help="postgres://... (default: SQLite)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def suspend_orders(count: int) -> None:
    """N orders over the threshold, each executed inline until its fraud review."""
    from orders.schemas import OrderPayload
    from orders.services.intake import order_create
    from workflows.engine import queue
    from workflows.engine.executor import run_execute

    queued: list[str] = []
    queue._send = queued.append  # execute here, not in a cluster
    for n in range(count):
        order_create(
            payload=OrderPayload(
                order_id=f"replay-{n:05d}",
                customer_id="cus_replay",
                customer_email="replay@example.com",
                amount=Decimal("2500.00"),
                currency="usd",
            )
        )
        while queued:
            run_execute(queued.pop())


def measure(args: argparse.Namespace) -> dict[str, Any]:
    database = BenchDatabase(args.database_url or "sqlite:///", name="bench_replay")
    try:
        url = database.create()
        env = service_env(url, workers=1, production=True)
        log(f"migrating {url.split('@')[-1]}")
        migrate(env)
        setup_django(env)
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        from workflows.engine.replay import runs_replay_check
        from workflows.models import RunStatus, StepRecord, WorkflowRun

        log(f"suspending {args.runs} orders at their fraud review")
        suspend_orders(args.runs)
        live = WorkflowRun.objects.filter(status=RunStatus.SUSPENDED).count()
        if live != args.runs:
            raise BenchError(f"{live} of {args.runs} runs suspended")
        steps = StepRecord.objects.count() / live
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            with CaptureQueriesContext(connection) as queries:
                results = list(runs_replay_check())
            timings.append(time.perf_counter() - started)
            if len(results) != live or not all(r.ok for r in results):
                raise BenchError("a run diverged on its own code")
        return {
            "database": connection.vendor,
            "runs": live,
            "steps_per_run": round(steps, 1),
            "seconds": [round(t, 3) for t in timings],
            "seconds_median": round(statistics.median(timings), 3),
            "runs_per_s": round(live / statistics.median(timings)),
            "queries": len(queries.captured_queries),
        }
    finally:
        database.drop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = measure(args)
    except BenchError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(
            f"{report['database']}: replay_check over {report['runs']} suspended order runs "
            f"({report['steps_per_run']} steps each): {report['seconds_median']} s median of "
            f"{report['seconds']} ({report['runs_per_s']} runs/s), "
            f"{report['queries']} SQL statements"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
