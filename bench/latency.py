"""The order flow with a slow model: throughput and latency when each model call waits.

    python -m bench.latency [--orders N=40] [--latencies 0.5,2] [--workers W=2]
                            [--concurrency C=100] [--database sqlite|postgres]
                            [--postgres-url postgres://postgres@127.0.0.1:5432/test]
                            [--clients C=8] [--json]

One database for all the configurations (a temp SQLite file by default, or `bench_latency`
created on the PostgreSQL server of `--postgres-url` and dropped at the end), migrated by a
subprocess, one gunicorn (2 workers, production settings) for the API; for each model
latency a fresh `manage.py qcluster` with `SIMULATED_MODEL_LATENCY` set to it, warmed up
with W orders, then N orders submitted through the API with C concurrent clients. Every
configuration is bounded: the runs must settle within 30 s + 1.5 * the expected time
(N * 3 model calls * latency ÷ (W * C slots)). The suspended orders are then approved all
at once. The report adds how many runs each worker executes at a time (from the runs'
`started_at` to their settle time), the workers' resident memory idle and at peak (and so
the memory one more run in flight costs) and the machine's CPU. See bench/README.md,
section "Latency".
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_POSTGRES_URL,
    SETTLED_RUN_STATUSES,
    Api,
    OwnDatabase,
    WebServer,
    WorkerMemory,
    check_outcomes,
    close_connections,
    comma_list,
    concurrency,
    cpu_busy,
    cpu_sample,
    create_accounts,
    database_label,
    deferred_signals,
    expected_status,
    interrupt_on_sigterm,
    llm_calls,
    make_logger,
    migrate,
    order_mix,
    percentile,
    render_table,
    review_all_at_once,
    run_reporting,
    settled_orders,
    setup_django,
    submit_all,
    wait_runs,
)
from tests.support.cluster import QCluster, service_env

PG_DATABASE = "bench_latency"
PROG = "bench.latency"
CALLS_PER_ORDER = 3  # a small order: charge, email, answer
log = make_logger("latency")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=40, help="orders per latency")
    parser.add_argument(
        "--latencies",
        type=comma_list(float, "numbers", 0, "latencies are seconds ≥ 0"),
        default=[0.5, 2.0],
        help="seconds per model call",
    )
    parser.add_argument("--workers", type=int, default=2, help="Q_WORKERS of the qcluster")
    parser.add_argument(
        "--concurrency", type=int, default=100, help="WORKFLOWS_CONCURRENCY per worker"
    )
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.orders < 10 or args.workers < 1 or args.clients < 1:
        parser.error("--orders must be at least 10, --workers and --clients at least 1")
    return args


def bound(orders: int, calls: int, latency: float, slots: int) -> float:
    """Seconds allowed: 30 s + 1.5 * the time the model waits alone would take."""
    return 30 + 1.5 * orders * calls * latency / slots


def run_latency(
    latency: float, args: argparse.Namespace, db_url: str, api: Api, web: WebServer
) -> dict[str, Any]:
    env = service_env(
        db_url,
        workers=args.workers,
        production=True,
        settings={
            "SIMULATED_MODEL_LATENCY": f"{latency:g}",
            "WORKFLOWS_CONCURRENCY": str(args.concurrency),
        },
    )
    q_log = Path(tempfile.gettempdir()) / f"bench-latency-{os.getpid()}-qcluster.log"
    cluster = QCluster(environ=env, log_path=q_log)
    keep_log = True
    tag = f"lat{int(latency * 1000)}ms"
    try:
        cluster.start()
        processes = [web, cluster]
        log(f"latency {latency:g} s: qcluster with {args.workers} workers, warming up")
        warm = [
            p for p in order_mix(40, f"warm-{tag}") if expected_status(p["amount"]) == "completed"
        ]
        warm_subs = submit_all(api, warm[: args.workers], args.clients)
        wait_runs(
            [s.run_id for s in warm_subs],
            ("completed",),
            30 + bound(1, CALLS_PER_ORDER, latency, 1),
            processes,
            "warm-up orders completed",
        )

        payloads = order_mix(args.orders, f"bench-{tag}")
        limit = bound(args.orders, CALLS_PER_ORDER, latency, args.workers * args.concurrency)
        log(f"submitting {len(payloads)} orders (bounded to {limit:.0f} s)")
        memory = WorkerMemory(cluster.process.pid, args.workers)
        idle_rss = memory.sample()
        memory.start()
        cpu_before = cpu_sample()
        submissions = submit_all(api, payloads, args.clients)
        run_ids = [s.run_id for s in submissions]
        wait_runs(run_ids, SETTLED_RUN_STATUSES, limit, processes, "orders settled", poll=0.05)
        cpu_after = cpu_sample()
        peak_rss = memory.stop()
        settled = settled_orders(submissions)
        wrong = check_outcomes(submissions, settled)

        first_submit = min(s.sent for s in submissions)
        last_settle = max(x.settled for x in settled.values())
        window = last_settle - first_submit
        e2e = [settled[s.order_id].settled - s.sent for s in submissions]
        segments = [(x.started, x.settled) for x in settled.values()]
        runs = [b - a for a, b in segments]
        peak, mean, span = concurrency(segments)
        calls = llm_calls(run_ids, until=last_settle)
        calls_per_order = calls / len(submissions)

        suspended = [x for x in settled.values() if x.suspended]
        review_limit = bound(len(suspended), 2, latency, args.workers * args.concurrency)
        log(
            f"approving {len(suspended)} suspended orders at once (bounded to {review_limit:.0f} s)"
        )
        resume = review_all_at_once(api, suspended, args.clients, review_limit, processes)
        cluster.stop()
        keep_log = False

        result: dict[str, Any] = {
            "date": date.today().isoformat(),
            "model_latency_s": latency,
            "workers": args.workers,
            "orders": len(submissions),
            "clients": args.clients,
            "cpus": os.cpu_count(),
            "outcomes": dict(Counter(x.order_status for x in settled.values())),
            "wrong_outcomes": wrong[:10],
            "wrong_count": len(wrong),
            "window_s": window,
            "orders_per_s": len(submissions) / window,
            "llm_calls_per_order": calls_per_order,
            "e2e_p50_s": percentile(e2e, 50),
            "e2e_p95_s": percentile(e2e, 95),
            "run_p50_s": percentile(runs, 50),
            "run_p95_s": percentile(runs, 95),
            "running_max": peak,
            "running_mean": mean,
            "running_span_s": span,
            "running_per_worker_max": peak / args.workers,
            "running_per_worker_mean": mean / args.workers,
            "reviews": len(resume),
            "resume_p50_s": percentile(resume, 50),
            "resume_p95_s": percentile(resume, 95),
            "cpu_busy": cpu_busy(cpu_before, cpu_after),
            "worker_rss_idle_mib": max(idle_rss.values(), default=0) / 1024,
            "worker_rss_peak_mib": max(peak_rss.values(), default=0) / 1024,
        }
        # What one more run in flight costs a worker: its memory growth under load over
        # the runs it held at the peak.
        growth = result["worker_rss_peak_mib"] - result["worker_rss_idle_mib"]
        per_worker_peak = result["running_per_worker_max"]
        result["rss_per_run_kib"] = growth * 1024 / per_worker_peak if per_worker_peak else 0
        # With WORKFLOWS_CONCURRENCY segments per worker on one event loop, a model wait
        # holds a slot, not a process: throughput ≤ slots ÷ (model calls per order *
        # latency), before CPU and the database's commits become the limit.
        slots = args.workers * args.concurrency
        result["slot_bound_orders_per_s"] = (
            slots / (calls_per_order * latency) if latency > 0 else float("inf")
        )
        return result
    except KeyboardInterrupt:
        keep_log = False  # logs are for failures
        raise
    finally:
        with deferred_signals():
            cluster.stop()
            if keep_log:
                if q_log.exists():
                    log(f"qcluster log kept: {q_log}")
            else:
                with contextlib.suppress(FileNotFoundError):
                    q_log.unlink()


def run(args: argparse.Namespace) -> dict[str, Any]:
    database = OwnDatabase(args.database, PG_DATABASE, args.postgres_url)
    web_log = Path(tempfile.gettempdir()) / f"bench-latency-{os.getpid()}-gunicorn.log"
    web: WebServer | None = None
    keep_log = True
    try:
        url = database.create()
        env = service_env(url, workers=args.workers, production=True)
        log(f"{args.database}: migrating")
        migrate(env)
        setup_django(env)
        import logging

        logging.getLogger("django_q").setLevel(logging.WARNING)
        label = database_label()
        client_token, reviewer_token = create_accounts()
        web = WebServer(env, web_log)
        web.start()
        api = Api(web.base_url, client_token, reviewer_token)
        results = [run_latency(latency, args, url, api, web) for latency in args.latencies]
        web.stop()
        keep_log = False
        return {"database": label, "results": results}
    except KeyboardInterrupt:
        keep_log = False
        raise
    finally:
        with deferred_signals():
            if web is not None:
                web.stop()
            close_connections()
            database.drop()
            if keep_log:
                if web_log.exists():
                    log(f"gunicorn log kept: {web_log}")
            else:
                with contextlib.suppress(FileNotFoundError):
                    web_log.unlink()


def render(report: dict[str, Any]) -> str:
    headers = [
        "model latency s",
        "workers",
        "orders",
        "orders/s",
        "slots ÷ (calls * latency)",
        "model calls/order",
        "e2e p50 s",
        "e2e p95 s",
        "run p50 s",
        "running/worker max",
        "running/worker mean",
        "worker RSS idle→peak MiB",
        "KiB per run in flight",
        "CPU busy",
    ]
    rows = []
    for r in report["results"]:
        cpu = r["cpu_busy"]
        rows.append(
            [
                f"{r['model_latency_s']:g}",
                str(r["workers"]),
                str(r["orders"]),
                f"{r['orders_per_s']:.2f}",
                f"{r['slot_bound_orders_per_s']:.1f}",
                f"{r['llm_calls_per_order']:.2f}",
                f"{r['e2e_p50_s']:.1f}",
                f"{r['e2e_p95_s']:.1f}",
                f"{r['run_p50_s']:.2f}",
                f"{r['running_per_worker_max']:.2f}",
                f"{r['running_per_worker_mean']:.2f}",
                f"{r['worker_rss_idle_mib']:.0f}→{r['worker_rss_peak_mib']:.0f}",
                f"{r['rss_per_run_kib']:.0f}",
                f"{cpu * 100:.0f}%" if cpu is not None else "n/a",
            ]
        )
    lines = [f"database: {report['database']}", render_table(headers, rows)]
    for r in report["results"]:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        lines.append(
            f"latency {r['model_latency_s']:g} s: {outcomes}; window {r['window_s']:.1f} s; "
            f"{r['reviews']} approvals at once: review→done p50 {r['resume_p50_s']:.2f} s, "
            f"p95 {r['resume_p95_s']:.2f} s"
        )
        for wrong in r["wrong_outcomes"]:
            lines.append(f"  unexpected outcome: {wrong}")
    lines.append(
        "a model wait holds one of the worker's WORKFLOWS_CONCURRENCY slots, not the process: "
        "throughput ≤ slots ÷ (model calls per order * latency) until CPU or commits bound it"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_sigterm()

    def work() -> int:
        report = run(args)
        print(json.dumps(report, sort_keys=True) if args.json else render(report))
        return 1 if any(r["wrong_count"] for r in report["results"]) else 0

    return run_reporting(PROG, log, work)


if __name__ == "__main__":
    sys.exit(main())
