"""Chaos run of the order flow: orders through real qcluster processes SIGKILLed at random.

    python -m bench.chaos [--orders N=500] [--kills K=10] [--seed S] [--workers W=2]
                          [--database-url URL] [--model-latency SECONDS=0.05]
                          [--timeout S=600]

It owns everything it uses: its database (a temp SQLite file, or a database `bench_chaos`
created, and dropped at the end, on the PostgreSQL server of `--database-url`; the
database named in the URL is only used to issue CREATE/DROP DATABASE), a local
Stripe-compatible server and a local SMTP server (from `tests/support`), and the qcluster
processes. Orders go in through `orders.services.intake.order_create` in K+1 waves; after each
of the first K waves the whole cluster (sentinel and workers) is SIGKILLed at a random
moment, a new one is started with a 2 s lease, and once the dead leases have expired the
runs are reaped from here. Large orders are approved or rejected (`review_decide`) as they
reach their review. At the end it prints the invariants and exits 1 if one is broken
(2 on a setup error). See bench/README.md, section "Chaos".
"""

import argparse
import contextlib
import logging
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import (
    BenchDatabase,
    BenchError,
    close_connections,
    database_label,
    make_logger,
    migrate,
    render_table,
    setup_django,
)
from bench.local_servers import OPENAI_KEY, order_model_responder, real_path_settings
from tests.support.cluster import QCluster, chaos_settings, service_env
from tests.support.openai_server import OpenAITestServer
from tests.support.smtp_server import SMTPTestServer
from tests.support.stripe_server import StripeServer

if TYPE_CHECKING:
    from tests.support.chaos import Planned

PROG = "bench.chaos"
PG_DATABASE = "bench_chaos"
LEASE_SECONDS = 2
# A killed cluster takes with it the tasks its pusher had dequeued from the ORM broker;
# the reaper re-queues such runs once pending this long while the queue is empty.
PENDING_REQUEUE_SECONDS = 3
log = make_logger("chaos")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=500, help="orders submitted")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of the whole cluster")
    parser.add_argument("--seed", type=int, default=None, help="seed of the schedule (random)")
    parser.add_argument("--workers", type=int, default=2, help="Q_WORKERS of each qcluster")
    parser.add_argument(
        "--database-url",
        default="",
        help="sqlite (default: a temp file) or postgres://... (bench_chaos is created there)",
    )
    parser.add_argument(
        "--model-latency", type=float, default=0.05, help="seconds per simulated model call"
    )
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds for the orders to settle at the end"
    )
    parser.add_argument(
        "--real",
        action="store_true",
        help="the openai SDK against the local model server (answering after --model-latency) "
        "instead of the simulated model",
    )
    parser.add_argument(
        "--crash",
        action="store_true",
        help="all orders at once, --kills SIGKILLs --kill-interval s apart once --in-flight "
        "runs execute, then the product's own recovery (its lease, its scheduled reaper): "
        "prints the time from the last restart to the last order settled",
    )
    parser.add_argument("--kill-interval", type=float, default=2.5, help="--crash: s between")
    parser.add_argument("--in-flight", type=int, default=100, help="--crash: runs at a kill")
    args = parser.parse_args(argv)
    if args.orders < 10 or args.kills < 0 or args.workers < 1:
        parser.error("--orders must be at least 10, --kills at least 0, --workers at least 1")
    if args.seed is None:
        args.seed = random.randrange(2**32)
    return args


# -- the experiment (after django.setup()) -------------------------------------------------

PATH_SHARES = [  # (path, share of the orders)
    ("small", 0.40),
    ("threshold", 0.10),
    ("approve", 0.18),
    ("reject", 0.18),
    ("declined", 0.14),
]
TERMINAL = ("completed", "rejected", "failed")


def plan_orders(n: int, rng: random.Random) -> list["Planned"]:
    from tests.support.chaos import Planned

    paths: list[str] = []
    for path, share in PATH_SHARES[1:]:
        paths += [path] * max(1, round(n * share))
    paths = [*(["small"] * (n - len(paths))), *paths][:n]
    rng.shuffle(paths)

    def amount(path: str) -> str:
        if path == "threshold":
            return "1000.00"
        if path in ("approve", "reject"):
            return f"{rng.randint(1001, 9999)}.{rng.randint(0, 99):02d}"
        if path == "declined":
            return f"{rng.choice([rng.randint(5, 999), rng.randint(1001, 9999)])}.00"
        return f"{rng.randint(5, 999)}.{rng.randint(0, 99):02d}"

    return [
        Planned(
            order_id=f"chaos-{i:05d}",
            amount=amount(path),
            customer_id="cus_declined" if path == "declined" else f"cus_{i:05d}",
            path=path,
        )
        for i, path in enumerate(paths)
    ]


def settled_count(planned: list["Planned"]) -> int:
    from orders.models import Order

    return Order.objects.filter(
        order_id__in=[p.order_id for p in planned],
        status__in=TERMINAL,
        run__status__in=["completed", "failed", "cancelled"],
    ).count()


def reviewer_user() -> Any:
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user("chaos-reviewer", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="decide_fraud_review"))
    return User.objects.get(pk=user.pk)


# -- the invariants ----------------------------------------------------------------------


@dataclass
class Row:
    name: str
    expected: str
    observed: str
    ok: bool | None  # None: reported, not an invariant

    @property
    def verdict(self) -> str:
        return "n/a" if self.ok is None else ("ok" if self.ok else "BROKEN")


def check(planned: list["Planned"], stripe: Any, smtp: Any) -> tuple[list[Row], list[str]]:
    from django.db.models import Q

    from orders.models import Order
    from workflows.models import RunStatus, Wait, WaitStatus, WorkflowRun

    orders = {
        o.order_id: o
        for o in Order.objects.filter(order_id__in=[p.order_id for p in planned]).select_related(
            "run"
        )
    }
    claims = dict(
        Order.objects.filter(emails__isnull=False).values_list("order_id", "emails__status")
    )
    intents = stripe.successful_charges()
    charges = Counter(pi["metadata"].get("order_id") for pi in intents)
    intent_ids = {pi["id"] for pi in intents}
    refunds = Counter(r["payment_intent"] for r in stripe.refunds.values())
    released = Counter(
        pi["metadata"].get("order_id")
        for pi in stripe.payment_intents.values()
        if pi["status"] == "canceled"
    )
    emails = Counter(m["Subject"] for m in smtp.messages)

    wrong_state, wrong_charge, wrong_refund, wrong_email = [], [], [], []
    states: Counter[str] = Counter()
    for p in planned:
        order = orders[p.order_id]
        label = order.status + ("+approved" if order.fraud_approved else "")
        states[label] += 1
        expected_label = p.expected_status + ("+approved" if p.path == "approve" else "")
        if label != expected_label or order.run.status != RunStatus.COMPLETED:
            wrong_state.append(f"{p.order_id}: {label}/{order.run.status}, {p.path} path")
        if charges[p.order_id] != int(p.charged) or (
            p.charged and order.charge_id not in intent_ids
        ):
            wrong_charge.append(f"{p.order_id}: {charges[p.order_id]} charges")
        refunded = refunds[order.charge_id] if order.charge_id else 0
        if refunded or released[p.order_id] != int(p.held_then_released):
            wrong_refund.append(
                f"{p.order_id}: {refunded} refunds, {released[p.order_id]} released holds"
            )
        sent = emails[p.subject]
        if sent != int(p.emailed):
            wrong_email.append(f"{p.order_id}: {sent} emails, claim {claims.get(p.order_id)}")

    expected_states = Counter(
        p.expected_status + ("+approved" if p.path == "approve" else "") for p in planned
    )
    running_without_lease = WorkflowRun.objects.filter(status=RunStatus.RUNNING).filter(
        Q(lease_owner="") | Q(lease_expires_at__isnull=True)
    )
    rejected = [p for p in planned if p.path == "reject"]
    rows = [
        Row(
            f"orders {state}",
            str(expected_states[state]),
            str(states[state]),
            states[state] == expected_states[state],
        )
        for state in ("completed", "completed+approved", "rejected", "failed")
    ]
    other = sum(n for s, n in states.items() if s not in expected_states)
    rows += [
        Row("orders in another state", "0", str(other), other == 0),
        Row("orders not in their path's state", "0", str(len(wrong_state)), not wrong_state),
        Row(
            "successful charges per order, max",
            "1",
            str(max(charges.values(), default=0)),
            max(charges.values(), default=0) <= 1,
        ),
        Row(
            "successful charges, total",
            str(sum(p.charged for p in planned)),
            str(len(intents)),
            len(intents) == sum(p.charged for p in planned),
        ),
        Row("orders without exactly their charges", "0", str(len(wrong_charge)), not wrong_charge),
        Row("refunds, total", "0", str(sum(refunds.values())), not refunds),
        Row(
            "released holds, total (one per rejected order)",
            str(len(rejected)),
            str(sum(released.values())),
            sum(released.values()) == len(rejected),
        ),
        Row(
            "orders without exactly their release",
            "0",
            str(len(wrong_refund)),
            not wrong_refund,
        ),
        Row(
            "confirmation emails per order, max",
            "1",
            str(max(emails.values(), default=0)),
            max(emails.values(), default=0) <= 1,
        ),
        Row(
            "confirmation emails, total",
            str(sum(p.emailed for p in planned)),
            str(sum(emails.values())),
            None,
        ),
        Row(
            "orders with an unexpected email count (else)",
            "0",
            str(len(wrong_email)),
            not wrong_email,
        ),
        Row(
            "runs running without a lease",
            "0",
            str(running_without_lease.count()),
            not running_without_lease.exists(),
        ),
        Row(
            "waits without a deadline",
            "0",
            str(Wait.objects.filter(deadline__isnull=True).count()),
            not Wait.objects.filter(deadline__isnull=True).exists(),
        ),
        Row(
            "waits still waiting",
            "0",
            str(Wait.objects.filter(status=WaitStatus.WAITING).count()),
            not Wait.objects.filter(status=WaitStatus.WAITING).exists(),
        ),
        Row(
            "failed runs",
            "0",
            str(WorkflowRun.objects.filter(status=RunStatus.FAILED).count()),
            not WorkflowRun.objects.filter(status=RunStatus.FAILED).exists(),
        ),
        Row("Stripe server errors", "0", str(len(stripe.errors)), not stripe.errors),
    ]
    details = [*wrong_state, *wrong_charge, *wrong_refund, *wrong_email]
    return rows, details


def render(rows: list[Row]) -> str:
    return render_table(
        ["invariant", "expected", "observed", "verdict"],
        [[r.name, r.expected, r.observed, r.verdict] for r in rows],
    )


# -- main --------------------------------------------------------------------------------


def crash(
    args: argparse.Namespace,
    experiment: Any,
    planned: list["Planned"],
    label: str,
    stripe: Any,
    smtp: Any,
    log_dir: Path,
) -> int:
    """Every order at once; K kills of the whole cluster, each once `--in-flight` runs
    execute and `--kill-interval` s after the previous restart; then nothing but the
    product's recovery (lease expiry, the scheduled reaper, re-queued lost tasks) and the
    reviewers and operator. Exit 1 if an invariant breaks or the orders do not settle
    within --timeout of the last restart."""
    from workflows.models import WorkflowRun

    started = time.monotonic()
    experiment.start_cluster()
    experiment.submit(planned)
    log(
        f"{label}: {len(planned)} orders submitted at once; model latency "
        f"{args.model_latency:g} s ({'openai SDK' if args.real else 'simulated'})"
    )
    for n in range(args.kills):
        experiment.pump_until_running(at_least=args.in_flight, timeout=60)
        experiment.kill_and_restart()
        log(
            f"kill {n + 1}: {experiment.kills[-1]} runs were running; "
            f"{settled_count(planned)}/{len(planned)} orders settled"
        )
        if n + 1 < args.kills:
            experiment.pump(args.kill_interval)
    restarted = time.monotonic()
    timeline = []
    deadline = restarted + args.timeout
    next_mark = restarted
    while (done := settled_count(planned)) < len(planned):
        now = time.monotonic()
        if now >= next_mark:
            running = WorkflowRun.objects.filter(status="running").count()
            timeline.append(f"+{now - restarted:.0f}s {done} settled, {running} running")
            next_mark += 10
        if now > deadline:
            log(f"only {done}/{len(planned)} orders settled {args.timeout:g} s after the restart")
            break
        experiment.pump(0.5)
        experiment.resolve_confirmations_in_doubt(smtp)
    settle = time.monotonic() - restarted
    experiment.clusters[-1].stop(timeout=15)
    rows, details = check(planned, stripe, smtp)
    broken = [r for r in rows if r.ok is False]
    print(
        f"{label}, {args.orders} orders at once, {args.kills} kills {args.kill_interval:g} s "
        f"apart (seed {args.seed}), {args.workers} workers, model latency "
        f"{args.model_latency:g} s ({'openai SDK' if args.real else 'simulated'}), the "
        f"product's lease and scheduled reaper"
    )
    print(render(rows))
    print(
        f"runs running at each kill: {experiment.kills}; last restart → last order settled: "
        f"{settle:.1f} s (target ≤ 120 s); first start → last restart "
        f"{restarted - started:.1f} s"
    )
    print("after the last restart: " + "; ".join(timeline))
    for line in details[:50]:
        print(f"  {line}")
    if broken or done < len(planned):
        print(
            f"BROKEN: {', '.join(r.name for r in broken) or 'not settled'} "
            f"(qcluster logs: {log_dir})"
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    database = BenchDatabase(args.database_url, PG_DATABASE)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    experiment: Any = None
    stripe = smtp = model = None
    keep_logs = True
    try:
        url = database.create()
        stripe = StripeServer().start()
        smtp = SMTPTestServer().start()
        settings = chaos_settings(
            stripe, smtp, model_latency=args.model_latency, lease_seconds=LEASE_SECONDS
        )
        if args.real:
            model = OpenAITestServer(api_key=OPENAI_KEY).start()
            ports = {"openai": model.port, "stripe": stripe.port, "smtp": smtp.port}
            settings |= real_path_settings(ports)
        if args.crash:  # the product's own lease
            del settings["WORKFLOWS_LEASE_SECONDS"]
        env = service_env(url, workers=args.workers, production=True, settings=settings)
        log(f"seed {args.seed}; database {database.shown_url()}: migrating")
        migrate(env)
        setup_django(env)
        if model is not None:
            model.respond_with(order_model_responder(args.model_latency))

        logging.getLogger("django-q").setLevel(logging.WARNING)
        logging.getLogger("orders").setLevel(logging.WARNING)
        logging.getLogger("workflows").setLevel(logging.ERROR)

        rng = random.Random(args.seed)
        planned = plan_orders(args.orders, rng)
        waves = [planned[i :: args.kills + 1] for i in range(args.kills + 1)]
        from tests.support.chaos import ChaosDriver

        experiment = ChaosDriver(
            start_cluster=lambda n: QCluster(
                environ=env, log_path=log_dir / f"qcluster-{n}.log"
            ).start(),
            reviewer=reviewer_user(),
            pending_requeue_seconds=PENDING_REQUEUE_SECONDS,
        )
        label = database_label()
        if args.crash:
            status = crash(args, experiment, planned, label, stripe, smtp, log_dir)
            keep_logs = status != 0
            return status
        log(
            f"{label}: {args.orders} orders in {len(waves)} waves, {args.kills} kills, "
            f"{args.workers} workers, lease {LEASE_SECONDS} s (logs: {log_dir})"
        )
        started = time.monotonic()
        experiment.start_cluster()
        for n, wave in enumerate(waves[: args.kills], start=1):
            experiment.submit(wave)
            experiment.pump_until_working(timeout=15)
            experiment.pump(rng.uniform(0.3, 1.5))
            experiment.kill_and_restart()
            experiment.pump(LEASE_SECONDS + 0.2)
            experiment.reap()
            log(
                f"kill {n}: {experiment.kills[-1]} runs were running; "
                f"{settled_count(planned)}/{len(planned)} orders settled"
            )
        experiment.submit(waves[-1])
        deadline = time.monotonic() + args.timeout
        while (done := settled_count(planned)) < len(planned):
            if time.monotonic() > deadline:
                log(f"only {done}/{len(planned)} orders settled within {args.timeout:g} s")
                break
            experiment.pump(1.0)
            experiment.reap()
            experiment.resolve_confirmations_in_doubt(smtp)
        elapsed = time.monotonic() - started
        experiment.clusters[-1].stop(timeout=15)
        log(f"{settled_count(planned)}/{len(planned)} orders settled after {elapsed:.1f} s")

        rows, details = check(planned, stripe, smtp)
        broken = [r for r in rows if r.ok is False]
        hits = sum(1 for k in experiment.kills if k)
        print(
            f"{label}, {args.orders} orders, {args.kills} kills (seed {args.seed}), "
            f"{args.workers} workers, lease {LEASE_SECONDS} s, model latency "
            f"{args.model_latency:g} s"
        )
        print(render(rows))
        print(
            f"{elapsed:.1f} s from the first cluster start to the last order settled "
            f"({args.orders / elapsed:.1f} orders/s); {hits}/{len(experiment.kills)} kills "
            f"hit running runs ({sum(experiment.kills)} in all), the killed clusters held "
            f"{len(experiment.held_tasks)} dequeued tasks; re-queued "
            f"{len(experiment.reaped_running)} runs with a dead lease and "
            f"{len(experiment.reaped_pending)} pending runs whose task was lost; "
            f"confirmations in doubt settled by the operator step: {len(experiment.resolved)}"
        )
        for line in details[:50]:
            print(f"  {line}")
        keep_logs = bool(broken)
        if broken:
            print(f"BROKEN: {', '.join(r.name for r in broken)} (qcluster logs: {log_dir})")
            return 1
        return 0
    except BenchError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if experiment is not None:
            for cluster in experiment.clusters:
                cluster.kill()
        for server in (stripe, smtp, model):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        close_connections()
        database.drop()
        if not keep_logs:
            for path in log_dir.glob("*"):
                path.unlink()
            with contextlib.suppress(OSError):
                log_dir.rmdir()


if __name__ == "__main__":
    sys.exit(main())
