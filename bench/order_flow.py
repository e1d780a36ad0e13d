"""Orders end to end: HTTP API (gunicorn) → qcluster workers → settled, and fraud reviews.

    python -m bench.order_flow [--orders N=300] [--workers 2,4] [--databases sqlite,postgres]
                           [--postgres-url postgres://postgres@127.0.0.1:5432/test]
                           [--clients C=8] [--timeout S=180] [--simulated]
                           [--mode production|serve] [--profile DIR] [--json]

Each (database, workers) configuration runs in a process of its own with a fresh
database: a temp SQLite file, or `bench_orders_<pid>` created on the PostgreSQL server of
`--postgres-url` (whose own database is only used to issue CREATE/DROP DATABASE) and
dropped at the end. It migrates it (subprocess), times raw one-row commits, creates a
client and a fraud reviewer with API tokens, starts gunicorn (2 workers, production
settings; `runserver` with scripts/serve.sh's defaults under `--mode serve`) and
`manage.py qcluster` (W workers; each under cProfile with `--profile`), both in their own
process groups and always stopped at the end; the workers use the real `openai` and
`stripe` SDKs and SMTP against the local servers of bench/local_servers.py (a model
without latency), or with `--simulated` the simulated model and gateway. It then warms
them up with 2*W orders, submits N orders with C concurrent HTTP clients and waits
until every run has settled (completed, failed, or suspended for review). Then it
approves the suspended orders one at a time through the API and times each from the
review's HTTP response to its run's `finished_at`. It prints the CPU ms per order of
each process group (a PostgreSQL server on this machine is one). See bench/README.md,
sections "The path production runs" and "Orders".
"""

import argparse
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_POSTGRES_URL,
    ROOT,
    SETTLED_RUN_STATUSES,
    Api,
    BenchError,
    OwnDatabase,
    ProcessGroups,
    WebServer,
    add_path_arguments,
    bench_cluster,
    check_outcomes,
    close_connections,
    comma_list,
    cpu_busy,
    cpu_sample,
    create_accounts,
    database_label,
    deferred_signals,
    expected_status,
    interrupt_on_sigterm,
    make_logger,
    measure_commit_rate,
    migrate,
    mode_env,
    mode_label,
    ms,
    order_mix,
    render_cpu,
    render_table,
    review_sequential,
    run_details,
    run_reporting,
    settled_orders,
    setup_django,
    steps_between,
    submit_all,
    wait_runs,
)
from bench.local_servers import LocalServers
from bench.profiled_qcluster import summarize
from tests.support.cluster import service_env

PG_DATABASE = "bench_orders"
PROG = "bench.order_flow"
REVIEW_TIMEOUT = 30.0
WARMUP_TIMEOUT = 90.0
log = make_logger("orders")


def _db_list(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values or set(values) - {"sqlite", "postgres"}:
        raise argparse.ArgumentTypeError("databases are sqlite and/or postgres")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=300, help="orders measured per config")
    parser.add_argument(
        "--workers",
        type=comma_list(int, "integers", 1, "worker counts must be at least 1"),
        default=[2, 4],
        help="e.g. 2,4",
    )
    parser.add_argument("--databases", type=_db_list, default=["sqlite", "postgres"])
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument(
        "--timeout", type=float, default=180, help="seconds for the orders to settle"
    )
    add_path_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.orders < 10 or args.clients < 1:
        parser.error("--orders must be at least 10 and --clients at least 1")
    return args


# -- one configuration, in this process ------------------------------------------------


def run_config(kind: str, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    database = OwnDatabase(kind, PG_DATABASE, args.postgres_url)
    tmp = Path(tempfile.gettempdir())
    web_log = tmp / f"bench-orders-{os.getpid()}-gunicorn.log"
    q_log = tmp / f"bench-orders-{os.getpid()}-qcluster.log"
    web: WebServer | None = None
    cluster = None
    servers: LocalServers | None = None
    keep_logs = True
    try:
        url = database.create()
        env = service_env(url, workers=workers, production=True)
        log(f"{kind}, {workers} workers: migrating {database.name if kind == 'postgres' else url}")
        migrate(env)
        if args.simulated:
            settings = {"LLM_PROVIDER": "simulated", "PAYMENT_GATEWAY": "simulated"}
        else:
            servers = LocalServers(mode_env(url, workers=workers, mode=args.mode), 0.0).start()
            settings = servers.settings()
        setup_django(env)
        import logging

        logging.getLogger("django_q").setLevel(logging.WARNING)
        label = database_label()
        log(f"{label}: 2000 one-row commits")
        commits_per_s = measure_commit_rate()
        client_token, reviewer_token = create_accounts()

        env = mode_env(url, workers=workers, mode=args.mode, settings=settings)
        web = WebServer(env, web_log, runserver=args.mode == "serve")
        web.start()
        profile_dir = None
        if args.profile:
            profile_dir = Path(args.profile) / f"order_flow-{kind}-{workers}w"
            profile_dir.mkdir(parents=True, exist_ok=True)
        cluster = bench_cluster(env, q_log, profile_dir).start()
        processes = [web, cluster, *(servers.servers.values() if servers else ())]
        api = Api(web.base_url, client_token, reviewer_token)
        log(f"gunicorn on {web.base_url}, qcluster with {workers} workers: warming up")
        warm = [p for p in order_mix(40, "warmup") if expected_status(p["amount"]) == "completed"]
        warm_subs = submit_all(api, warm[: 2 * workers], args.clients)
        wait_runs(
            [s.run_id for s in warm_subs],
            ("completed",),
            WARMUP_TIMEOUT,
            processes,
            "warm-up orders completed",
        )

        payloads = order_mix(args.orders, f"bench-w{workers}")
        log(f"submitting {len(payloads)} orders with {args.clients} clients")
        groups = ProcessGroups.of_service(
            web_pid=web.process.pid,
            cluster_pid=cluster.process.pid,
            local_servers=servers.pids() if servers else {},
            workers=workers,
        )
        load = os.getloadavg()
        cpu_before = cpu_sample()
        groups_before = groups.sample()
        submissions = submit_all(api, payloads, args.clients)
        log("all submitted; waiting for the runs to settle")
        wait_runs(
            [s.run_id for s in submissions],
            SETTLED_RUN_STATUSES,
            args.timeout,
            processes,
            "orders settled",
            poll=0.05,
        )
        groups_after = groups.sample()
        cpu_after = cpu_sample()
        settled = settled_orders(submissions)
        wrong = check_outcomes(submissions, settled)

        first_submit = min(s.sent for s in submissions)
        last_settle = max(x.settled for x in settled.values())
        window = last_settle - first_submit
        steps = steps_between(first_submit, last_settle)
        e2e = [settled[s.order_id].settled - s.sent for s in submissions]
        runs = [x.settled - x.started for x in settled.values()]
        submit = [s.answered - s.sent for s in submissions]
        last_answer = max(s.answered for s in submissions)

        suspended = [settled[s.order_id] for s in submissions if settled[s.order_id].suspended]
        log(f"approving {len(suspended)} suspended orders one at a time")
        resume = review_sequential(api, suspended, REVIEW_TIMEOUT, processes)
        cluster.stop()
        web.stop()
        served = servers.stop() if servers else {}
        keep_logs = False

        result: dict[str, Any] = {
            "date": date.today().isoformat(),
            "database": label,
            "kind": kind,
            "mode": mode_label(args),
            "load_before": load,
            "cpu_ms_per_order": ProcessGroups.ms_per(groups_before, groups_after, len(submissions)),
            "worker_processes": int(groups_after.get("worker pids", 0)),
            "served": served,
            "workers": workers,
            "orders": len(submissions),
            "clients": args.clients,
            "cpus": os.cpu_count(),
            "outcomes": dict(Counter(x.order_status for x in settled.values())),
            "wrong_outcomes": wrong[:10],
            "wrong_count": len(wrong),
            "window_s": window,
            "orders_per_s": len(submissions) / window,
            "submit_window_s": last_answer - first_submit,
            "submit_p50_ms": ms(submit, 50),
            "submit_p95_ms": ms(submit, 95),
            "e2e_p50_ms": ms(e2e, 50),
            "e2e_p95_ms": ms(e2e, 95),
            "run_p50_ms": ms(runs, 50),
            "run_p95_ms": ms(runs, 95),
            "reviews": len(resume),
            "resume_p50_ms": ms(resume, 50),
            "resume_p95_ms": ms(resume, 95),
            "steps": steps,
            "steps_per_order": steps / len(submissions),
            "steps_per_s": steps / window,
            "commits_per_s": commits_per_s,
            "cpu_busy": cpu_busy(cpu_before, cpu_after),
        }
        result["ratio"] = result["steps_per_s"] / commits_per_s
        if profile_dir is not None and (summary := summarize(profile_dir)):
            result["profile"] = str(summary)
        return result
    except KeyboardInterrupt:
        keep_logs = False  # logs are for failures
        raise
    finally:
        with deferred_signals():
            if cluster is not None:
                cluster.stop()
            if web is not None:
                web.stop()
            if servers is not None:
                servers.stop()
            close_connections()
            database.drop()
            if keep_logs:
                if kept := [str(p) for p in (web_log, q_log) if p.exists()]:
                    log(f"logs kept: {' '.join(kept)}")
            else:
                for path in (web_log, q_log):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()


# -- several configurations: one child process each ------------------------------------


def run_child(kind: str, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        __spec__.name if __spec__ else "bench.order_flow",
        "--databases",
        kind,
        "--workers",
        str(workers),
        "--orders",
        str(args.orders),
        "--clients",
        str(args.clients),
        "--timeout",
        str(args.timeout),
        "--postgres-url",
        args.postgres_url,
        "--mode",
        args.mode,
        *(["--simulated"] if args.simulated else []),
        *(["--profile", args.profile] if args.profile else []),
        "--json",
    ]
    child = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    last = ""
    try:
        assert child.stderr is not None and child.stdout is not None
        for line in child.stderr:
            if line.startswith(f"{PROG}: error: "):
                last = line.strip()  # repeated below, with the configuration
                continue
            sys.stderr.write(line)
            sys.stderr.flush()
        output = child.stdout.read()
        code = child.wait()
    finally:
        with deferred_signals():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)  # its finally stops its servers
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=60)
    try:
        results = json.loads(output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        reason = last.removeprefix(f"{PROG}: error: ") or f"exit status {code}"
        raise BenchError(f"{kind}, {workers} workers: {reason}") from None
    return results[0]


# -- report ------------------------------------------------------------------------------


def render(results: list[dict[str, Any]]) -> str:
    headers = [
        "database",
        "workers",
        "orders/s",
        "e2e p50 ms",
        "e2e p95 ms",
        "run p50 ms",
        "review→done p50 ms",
        "p95 ms",
        "steps/s",
        "commits/s",
        "steps/s ÷ commits/s",
        "CPU busy",
    ]
    rows = []
    for r in results:
        cpu = r["cpu_busy"]
        rows.append(
            [
                r["database"],
                str(r["workers"]),
                f"{r['orders_per_s']:.1f}",
                f"{r['e2e_p50_ms']:.0f}",
                f"{r['e2e_p95_ms']:.0f}",
                f"{r['run_p50_ms']:.0f}",
                f"{r['resume_p50_ms']:.0f}",
                f"{r['resume_p95_ms']:.0f}",
                f"{r['steps_per_s']:.0f}",
                f"{r['commits_per_s']:.0f}",
                f"{r['ratio']:.2f}",
                f"{cpu * 100:.0f}%" if cpu is not None else "n/a",
            ]
        )
    lines = [render_table(headers, rows), ""]
    lines.append(
        "CPU ms per order, by process group (project = web + qcluster; the local "
        "servers, the database server and the benchmark's clients apart):"
    )
    lines.append(
        render_cpu(
            [
                (
                    f"{r['mode']}, {r['database']}, {r['workers']} workers, "
                    f"load {r['load_before'][0]:.1f}",
                    r["cpu_ms_per_order"],
                )
                for r in results
            ]
        )
    )
    for r in results:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        lines.append(
            f"{r['database']}, {r['workers']} workers: {r['orders']} orders ({outcomes}), "
            f"{r['steps_per_order']:.1f} steps/order; HTTP submit p50 {r['submit_p50_ms']:.0f} "
            f"ms, p95 {r['submit_p95_ms']:.0f} ms, all answered in {r['submit_window_s']:.1f} s "
            f"of a {r['window_s']:.1f} s window; {r['reviews']} reviews; load average "
            f"before {r['load_before'][0]:.2f}; {r['worker_processes']} worker processes"
        )
        lines.extend(run_details(r))
    lines.extend(targets(results))
    return "\n".join(lines)


def targets(results: list[dict[str, Any]]) -> list[str]:
    lines = ["targets:"]
    resume = [f"{r['resume_p50_ms']:.0f}" for r in results]
    ok = all(r["resume_p50_ms"] < 300 for r in results)
    verdict = "holds" if ok else "MISSED"
    lines.append(f"  review-resume p50 < 300 ms: {verdict} ({', '.join(resume)})")
    ratios = [f"{r['ratio']:.2f}" for r in results]
    ok = all(r["ratio"] >= 0.5 for r in results)
    lines.append(f"  steps/s ≥ ½ commits/s: {'holds' if ok else 'MISSED'} ({', '.join(ratios)})")
    for kind in dict.fromkeys(r["kind"] for r in results):
        runs = sorted((r["workers"], r["orders_per_s"]) for r in results if r["kind"] == kind)
        if len(runs) > 1:
            series = " → ".join(f"{w}w {v:.1f}" for w, v in runs)
            rising = all(b[1] > a[1] * 1.05 for a, b in itertools.pairwise(runs))
            verdict = "rises" if rising else "does NOT rise"
            lines.append(f"  {kind} orders/s with workers: {series} ({verdict})")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_sigterm()
    configs = [(kind, w) for kind in args.databases for w in args.workers]

    def work() -> int:
        if len(configs) == 1:
            results = [run_config(*configs[0], args)]
        else:
            results = [run_child(kind, w, args) for kind, w in configs]
        print(json.dumps(results, sort_keys=True) if args.json else render(results))
        return 1 if any(r["wrong_count"] for r in results) else 0

    return run_reporting(PROG, log, work)


if __name__ == "__main__":
    sys.exit(main())
