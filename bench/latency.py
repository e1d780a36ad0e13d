"""The order flow with a slow model: throughput and latency when each model call waits.

    python -m bench.latency [--orders N=40] [--latencies 0.5,2] [--workers W=2]
                            [--concurrency C=100] [--database sqlite|postgres]
                            [--postgres-url postgres://postgres@127.0.0.1:5432/test]
                            [--clients C=8] [--simulated] [--mode production|serve]
                            [--profile DIR] [--repeat N] [--json]

One database for all the configurations (a temp SQLite file by default, or
`bench_latency_<pid>` created on the PostgreSQL server of `--postgres-url`, or of a
PostgreSQL DATABASE_URL, and dropped at the end), migrated by a subprocess. For each model
latency, fresh processes: the path production runs by default, the workers' `openai` and
`stripe` SDKs and SMTP against the suite's local servers (bench/local_servers.py, each in
a process of its own, the model answering after the latency on the server side), or with
`--simulated` the simulated model (`SIMULATED_MODEL_LATENCY`) and gateway; the web
process (gunicorn with 2 workers and production settings, or with `--mode serve`
`runserver` and scripts/serve.sh's development defaults); `manage.py qcluster` (under
cProfile per worker with `--profile`), warmed up with W orders, then N orders submitted
through the API with C concurrent clients. Every
configuration is bounded: the runs must settle within 30 s + 1.5 * the expected time
(N * 3 model calls * latency ÷ (W * C slots)). The suspended orders are then approved all
at once. The report adds how many runs each worker executes at a time (from the runs'
`started_at` to their settle time), the workers' resident memory idle and at peak (and so
the memory one more run in flight costs), the machine's CPU, and the CPU ms per order of
each process group (web, qcluster and its worker processes, each local server, a
PostgreSQL server on this machine, the benchmark's own clients; "project" = web +
qcluster). See bench/README.md, section "Latency".
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
    ENV_IS_POSTGRES,
    SETTLED_RUN_STATUSES,
    Api,
    OwnDatabase,
    ProcessGroups,
    WebServer,
    WorkerMemory,
    add_path_arguments,
    bench_cluster,
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
    mode_env,
    mode_label,
    order_mix,
    percentile,
    render_cpu,
    render_table,
    review_all_at_once,
    run_details,
    run_reporting,
    settled_orders,
    setup_django,
    submit_all,
    wait_runs,
)
from bench.local_servers import LocalServers
from bench.profiled_qcluster import summarize
from tests.support.cluster import service_env

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
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgres"],
        default="postgres" if ENV_IS_POSTGRES else "sqlite",
        help="postgres: a database of its own on the server of --postgres-url (DATABASE_URL)",
    )
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    add_path_arguments(parser)
    parser.add_argument("--repeat", type=int, default=1, help="measure each latency N times")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.orders < 10 or args.workers < 1 or args.clients < 1:
        parser.error("--orders must be at least 10, --workers and --clients at least 1")
    return args


def bound(orders: int, calls: int, latency: float, slots: int) -> float:
    """Seconds allowed: 30 s + 1.5 * the time the model waits alone would take + half a
    second of CPU per order (a loaded 2-core machine on the real path)."""
    return 30 + 1.5 * orders * calls * latency / slots + 0.5 * orders


def run_latency(
    latency: float, args: argparse.Namespace, db_url: str, api: Api, tag_prefix: str = ""
) -> dict[str, Any]:
    tmp = Path(tempfile.gettempdir())
    q_log = tmp / f"bench-latency-{os.getpid()}-qcluster.log"
    web_log = tmp / f"bench-latency-{os.getpid()}-web.log"
    servers = None
    web: WebServer | None = None
    settings: dict[str, str | None] = {"WORKFLOWS_CONCURRENCY": str(args.concurrency)}
    base_env = mode_env(db_url, workers=args.workers, mode=args.mode)
    if args.simulated:
        settings |= {
            "LLM_PROVIDER": "simulated",
            "PAYMENT_GATEWAY": "simulated",
            "SIMULATED_MODEL_LATENCY": f"{latency:g}",
        }
    else:
        servers = LocalServers(base_env, latency).start()
        settings |= servers.settings()
    env = mode_env(db_url, workers=args.workers, mode=args.mode, settings=settings)
    profile_dir = None
    if args.profile:
        profile_dir = Path(args.profile) / f"latency-{latency:g}s"
        profile_dir.mkdir(parents=True, exist_ok=True)
    cluster = bench_cluster(env, q_log, profile_dir)
    keep_log = True
    tag = f"{tag_prefix}lat{int(latency * 1000)}ms"
    try:
        web = WebServer(env, web_log, runserver=args.mode == "serve")
        web.start()
        api = Api(web.base_url, api.client_token, api.reviewer_token)
        cluster.start()
        processes = [web, cluster, *(servers.servers.values() if servers else ())]
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
        limit *= 4 if args.profile else 1  # profiled workers are several times slower
        log(f"submitting {len(payloads)} orders (bounded to {limit:.0f} s)")
        memory = WorkerMemory(cluster.process.pid, args.workers)
        idle_rss = memory.sample()
        memory.start()
        groups = ProcessGroups.of_service(
            web_pid=web.process.pid,
            cluster_pid=cluster.process.pid,
            local_servers=servers.pids() if servers else {},
            workers=args.workers,
        )
        load = os.getloadavg()
        cpu_before = cpu_sample()
        groups_before = groups.sample()
        submissions = submit_all(api, payloads, args.clients)
        run_ids = [s.run_id for s in submissions]
        wait_runs(run_ids, SETTLED_RUN_STATUSES, limit, processes, "orders settled", poll=0.05)
        groups_after = groups.sample()
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
        web.stop()
        served = servers.stop() if servers else {}
        keep_log = False

        result: dict[str, Any] = {
            "date": date.today().isoformat(),
            "mode": mode_label(args),
            "model_latency_s": latency,
            "workers": args.workers,
            "orders": len(submissions),
            "clients": args.clients,
            "cpus": os.cpu_count(),
            "load_before": load,
            "outcomes": dict(Counter(x.order_status for x in settled.values())),
            "wrong_outcomes": wrong[:10],
            "wrong_count": len(wrong),
            "window_s": window,
            "orders_per_s": len(submissions) / window,
            # How fast the API took the orders in: below the bound, the intake is the limit.
            "intake_orders_per_s": len(submissions)
            / (max(s.answered for s in submissions) - first_submit),
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
            "cpu_ms_per_order": ProcessGroups.ms_per(groups_before, groups_after, len(submissions)),
            "worker_processes": int(groups_after.get("worker pids", 0)),
            "served": served,
            "worker_rss_idle_mib": max(idle_rss.values(), default=0) / 1024,
            "worker_rss_peak_mib": max(peak_rss.values(), default=0) / 1024,
        }
        if profile_dir is not None and (summary := summarize(profile_dir)):
            result["profile"] = str(summary)
        # What one more run in flight costs a worker: its memory growth under load over
        # the runs it held at the peak.
        growth = result["worker_rss_peak_mib"] - result["worker_rss_idle_mib"]
        per_worker_peak = result["running_per_worker_max"]
        result["rss_per_run_kib"] = growth * 1024 / per_worker_peak if per_worker_peak else 0
        # With WORKFLOWS_CONCURRENCY segments per worker on one event loop, a model wait
        # holds a slot, not a process, and one of the cluster's model-call cap:
        # throughput ≤ the fewer of the two ÷ (model calls per order * latency), before
        # CPU and the database's commits become the limit. A run of N orders also fills
        # and drains the pipeline: its window is at least N ÷ that bound + one order's
        # model time.
        from orders.agents import order_agent  # Django is set up by now
        from workflows.engine.limits import concurrency_limit

        in_flight = args.workers * args.concurrency
        provider = "simulated" if args.simulated else order_agent.provider
        if cap := concurrency_limit(f"{provider}:{order_agent.model}"):
            in_flight = min(in_flight, cap)
        model_seconds = calls_per_order * latency
        result["model_cap"] = cap
        result["bound_orders_per_s"] = result["bound_window_orders_per_s"] = float("inf")
        if model_seconds:
            steady = in_flight / model_seconds
            result["bound_orders_per_s"] = steady
            result["bound_window_orders_per_s"] = len(submissions) / (
                len(submissions) / steady + model_seconds
            )
        return result
    except KeyboardInterrupt:
        keep_log = False  # logs are for failures
        raise
    finally:
        with deferred_signals():
            cluster.stop()
            if web is not None:
                web.stop()
            if servers is not None:
                servers.stop()
            for path in (q_log, web_log):
                if keep_log:
                    if path.exists():
                        log(f"log kept: {path}")
                else:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()


def run(args: argparse.Namespace) -> dict[str, Any]:
    database = OwnDatabase(args.database, PG_DATABASE, args.postgres_url)
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
        api = Api("", client_token, reviewer_token)
        results = []
        for repeat in range(args.repeat):
            prefix = f"r{repeat}-" if args.repeat > 1 else ""
            results += [run_latency(latency, args, url, api, prefix) for latency in args.latencies]
        return {"database": label, "results": results}
    finally:
        with deferred_signals():
            close_connections()
            database.drop()


def render(report: dict[str, Any]) -> str:
    headers = [
        "model latency s",
        "workers",
        "orders",
        "orders/s",
        "intake orders/s",
        "bound: slots or cap ÷ (calls * latency)",
        "bound for N orders",
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
                f"{r['intake_orders_per_s']:.1f}",
                f"{r['bound_orders_per_s']:.1f}",
                f"{r['bound_window_orders_per_s']:.1f}",
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
    lines = [f"database: {report['database']}", render_table(headers, rows), ""]
    lines.append(
        "CPU ms per order, by process group (project = web + qcluster; the local "
        "servers, the database server and the benchmark's clients apart):"
    )
    lines.append(
        render_cpu(
            [
                (
                    f"{r['mode']}, {r['model_latency_s']:g} s, load {r['load_before'][0]:.1f}",
                    r["cpu_ms_per_order"],
                )
                for r in report["results"]
            ]
        )
    )
    for r in report["results"]:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        lines.append(
            f"latency {r['model_latency_s']:g} s: {outcomes}; window {r['window_s']:.1f} s; "
            f"{r['reviews']} approvals at once: review→done p50 {r['resume_p50_s']:.2f} s, "
            f"p95 {r['resume_p95_s']:.2f} s; load average before {r['load_before'][0]:.2f}; "
            f"{r['worker_processes']} worker processes"
        )
        lines.extend(run_details(r))
    lines.append(
        "a model wait holds one of the worker's WORKFLOWS_CONCURRENCY slots (not the process) "
        "and one of the cluster's WORKFLOWS_MODEL_CONCURRENCY: throughput ≤ the fewer of the two "
        "÷ (model calls per order * latency) until CPU or commits bound it; N orders take at "
        "least N ÷ that + one order's model time"
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
