"""Throughput benchmark of the workflow engine against its database's commit rate.

    python -m bench.engine [--runs N=200] [--steps K=10] [--workers W=2]
                           [--database-url URL] [--timeout S=300] [--json] [--profile]

It owns its database: a temp SQLite file, or a database `bench_engine` created (and
dropped at the end) on the PostgreSQL server of `--database-url`; the database named in
the URL is only used to issue CREATE/DROP DATABASE. See bench/README.md for the figures.
"""

import argparse
import contextlib
import cProfile
import io
import json
import logging
import os
import pstats
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from bench.common import (
    COMMIT_LOOPS,
    BenchDatabase,
    BenchError,
    close_connections,
    cpu_busy,
    cpu_sample,
    database_label,
    make_logger,
    measure_commit_rate,
    migrate,
    percentile,
    render_table,
    setup_django,
)
from tests.support.cluster import QCluster, service_env

PROG = "bench.engine"
BENCH_WORKFLOWS = "bench.bench_workflows"
WORKFLOW_ID = "bench.noop"
PG_BENCH_DB = "bench_engine"
INPROC_STEPS = 100


log = make_logger("bench")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs executed by the cluster")
    parser.add_argument("--steps", type=int, default=10, help="no-op steps per run")
    parser.add_argument("--workers", type=int, default=2, help="Q_WORKERS of the qcluster")
    parser.add_argument(
        "--database-url",
        default="",
        help="sqlite (default: a temp file) or postgres://... (a server: bench_engine is "
        "created on it)",
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the runs")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead")
    parser.add_argument(
        "--profile", action="store_true", help="also cProfile one in-process run (stderr)"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.steps < 1 or args.workers < 1:
        parser.error("--runs, --steps and --workers must be at least 1")
    return args


# -- measurements (after django.setup()) -----------------------------------------------


def enqueue_runs(n: int, k: int) -> list[Any]:
    from workflows import workflow_start

    return [workflow_start(WORKFLOW_ID, {"steps": k}).id for _ in range(n)]


def finished_count(ids: list[Any]) -> int:
    from workflows.models import RunStatus, WorkflowRun

    return (
        WorkflowRun.objects.filter(workflow_id=WORKFLOW_ID, pk__in=ids)
        .filter(status__in=[RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED])
        .count()
    )


def run_stats(ids: list[Any], k: int) -> dict[str, Any]:
    from workflows.models import RunStatus, StepRecord, WorkflowRun

    rows = list(
        WorkflowRun.objects.filter(pk__in=ids).values_list("status", "started_at", "finished_at")
    )
    completed = [r for r in rows if r[0] == RunStatus.COMPLETED]
    if not completed:
        raise BenchError("no run completed")
    window = (max(r[2] for r in completed) - min(r[1] for r in completed)).total_seconds()
    durations = [(r[2] - r[1]).total_seconds() * 1000 for r in completed]

    gaps: list[float] = []
    previous: tuple[Any, Any] = (None, None)
    steps = StepRecord.objects.filter(run_id__in=ids).order_by("run_id", "position")
    for run_id, finished_at in steps.values_list("run_id", "finished_at").iterator():
        if run_id == previous[0]:
            gaps.append((finished_at - previous[1]).total_seconds() * 1000)
        previous = (run_id, finished_at)
    return {
        "completed": len(completed),
        "failed": len(rows) - len(completed),
        "window_s": window,
        "runs_per_s": len(completed) / window,
        "steps_per_s": len(completed) * k / window,
        "step_gap_p50_ms": percentile(gaps, 50),
        "step_gap_p95_ms": percentile(gaps, 95),
        "run_duration_p50_ms": percentile(durations, 50),
    }


def _start_unqueued(k: int) -> Any:
    """A pending run of bench.noop whose task is not sent: executed in-process."""
    from unittest import mock

    from workflows import workflow_start
    from workflows.engine import queue

    with mock.patch.object(queue, "_send", lambda run_id: None):
        return workflow_start(WORKFLOW_ID, {"steps": k}).id


def _execute(run_id: Any) -> None:
    from workflows.engine.executor import run_execute

    outcome = run_execute(run_id)
    if outcome != "completed":
        raise BenchError(f"in-process run {run_id} ended {outcome!r}")


def _sql_shape(sql: str) -> str:
    """`SELECT .. "table"`, `INSERT .. "table"`, `UPDATE "table"`, `BEGIN ..`."""
    words = sql.split()
    if not words:
        return ""
    verb = words[0].upper()
    # The verb's own table: INSERT INTO t, UPDATE t, SELECT .. FROM t (the first FROM:
    # the step insert's fence subquery names the run table later in the statement).
    marker = {"INSERT": "INTO", "UPDATE": "UPDATE"}.get(verb, "FROM")
    if marker in words[:-1]:
        return f"{verb} {words[words.index(marker) + 1]}"
    return " ".join(words[:2])


TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE", "ROLLBACK")


def measure_queries(k: int) -> dict[str, Any]:
    """SQL of one in-process run of K steps, and of K=0 (the run's fixed part).

    `queries` leaves out transaction control (BEGIN/COMMIT, which Django records on
    SQLite but not all of on PostgreSQL); `statements` counts everything captured."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    queries: dict[int, int] = {}
    statements: dict[int, int] = {}
    shapes: Counter[str] = Counter()
    for steps in (0, k):
        run_id = _start_unqueued(steps)
        with CaptureQueriesContext(connection) as captured:
            _execute(run_id)
        sqls = [q["sql"] for q in captured.captured_queries]
        statements[steps] = len(sqls)
        queries[steps] = sum(not sql.upper().startswith(TRANSACTION_CONTROL) for sql in sqls)
        if steps == k:
            shapes.update(_sql_shape(sql) for sql in sqls)
    return {
        "queries_fixed": queries[0],
        "queries_per_step": (queries[k] - queries[0]) / k,
        "queries_total_per_step": queries[k] / k,
        "statements_fixed": statements[0],
        "statements_per_step": (statements[k] - statements[0]) / k,
        "query_shapes": dict(shapes.most_common()),
    }


def measure_inprocess(steps: int = INPROC_STEPS) -> float:
    """Steps/s of one run executed serially in this process (no queue, no contention)."""
    run_id = _start_unqueued(steps)
    started = time.perf_counter()
    _execute(run_id)
    return steps / (time.perf_counter() - started)


def profile_run(steps: int = INPROC_STEPS) -> str:
    run_id = _start_unqueued(steps)
    profiler = cProfile.Profile()
    profiler.runcall(_execute, run_id)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(20)
    stats.sort_stats("cumulative").print_stats(35)
    return out.getvalue()


# -- report ------------------------------------------------------------------------------

COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("database", "database", str),
    ("N", "runs", str),
    ("K", "steps", str),
    ("workers", "workers", str),
    ("runs/s", "runs_per_s", lambda v: f"{v:.1f}"),
    ("steps/s", "steps_per_s", lambda v: f"{v:.0f}"),
    ("step p50 ms", "step_gap_p50_ms", lambda v: f"{v:.2f}"),
    ("step p95 ms", "step_gap_p95_ms", lambda v: f"{v:.2f}"),
    ("queries/step", "queries_per_step", lambda v: f"{v:.1f}"),
    ("commits/s", "commits_per_s", lambda v: f"{v:.0f}"),
    ("steps/s ÷ commits/s", "ratio", lambda v: f"{v:.2f}"),
]


def render(result: dict[str, Any]) -> str:
    header = [name for name, _, _ in COLUMNS]
    row = [fmt(result[key]) for _, key, fmt in COLUMNS]
    lines = [render_table(header, [row])]
    cpu = result.get("cpu_busy")
    cpu_text = f"{cpu * 100:.0f}%" if cpu is not None else "n/a"
    lines.append(
        f"window {result['window_s']:.2f} s (min started_at → max finished_at), "
        f"cluster start → last completion seen {result['wall_from_cluster_start_s']:.2f} s, "
        f"machine CPU busy {cpu_text}; each worker spent {result['worker_ms_per_run']:.1f} ms "
        f"per run, of which the run itself (started→finished) p50 "
        f"{result['run_duration_p50_ms']:.1f} ms"
    )
    lines.append(
        f"queries: {result['queries_fixed']} fixed per run + {result['queries_per_step']:.1f} "
        f"per step ({result['queries_total_per_step']:.1f}/step incl. fixed, K={result['steps']}; "
        f"with BEGIN/COMMIT: {result['statements_fixed']} + {result['statements_per_step']:.1f}); "
        f"in-process single run: {result['inproc_steps_per_s']:.0f} steps/s; "
        f"failed runs: {result['failed']}"
    )
    lines.append(
        "statements of one run: "
        + ", ".join(f"{shape} x{n}" for shape, n in result["query_shapes"].items())
    )
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    database = BenchDatabase(args.database_url, PG_BENCH_DB)
    cluster: QCluster | None = None
    log_file = Path(tempfile.gettempdir()) / f"bench-engine-{os.getpid()}-qcluster.log"
    keep_log = True
    try:
        url = database.create()
        env = service_env(
            url, workers=args.workers, workflow_modules=[BENCH_WORKFLOWS], production=True
        )
        log(f"database {database.shown_url()}: migrating")
        migrate(env)
        setup_django(env)

        logging.getLogger("django-q").setLevel(logging.WARNING)  # one INFO line per enqueue

        label = database_label()
        log(f"{label}: {COMMIT_LOOPS} one-row commits")
        commits_per_s = measure_commit_rate()

        log(f"enqueueing {args.runs} runs of {WORKFLOW_ID} with {args.steps} steps")
        t0 = time.perf_counter()
        ids = enqueue_runs(args.runs, args.steps)
        enqueue_s = time.perf_counter() - t0

        log(f"starting qcluster with {args.workers} workers (log: {log_file})")
        cluster = QCluster(environ=env, log_path=log_file)
        cpu_before = cpu_sample()
        started = time.monotonic()
        cluster.start()
        deadline = started + args.timeout
        while (done := finished_count(ids)) < len(ids):
            if (code := cluster.exited()) is not None:
                raise BenchError(f"qcluster exited with status {code}: {cluster.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(
                    f"only {done}/{len(ids)} runs finished within {args.timeout:g} s "
                    f"(qcluster log: {log_file})"
                )
            time.sleep(0.1)
        wall = time.monotonic() - started
        cpu_after = cpu_sample()
        log(f"all {len(ids)} runs finished {wall:.1f} s after the cluster started; stopping it")
        cluster.stop()

        result: dict[str, Any] = {
            "date": date.today().isoformat(),
            "database": label,
            "runs": args.runs,
            "steps": args.steps,
            "workers": args.workers,
            "cpus": os.cpu_count(),
            "commits_per_s": commits_per_s,
            "enqueue_s": enqueue_s,
            "wall_from_cluster_start_s": wall,
            "cpu_busy": cpu_busy(cpu_before, cpu_after),
            **run_stats(ids, args.steps),
        }
        result["ratio"] = result["steps_per_s"] / commits_per_s
        # What each worker spent per run, against the run's own started→finished time:
        # the difference is queueing/dispatch (django-q) plus lease acquire and finish.
        result["worker_ms_per_run"] = args.workers * result["window_s"] / result["completed"] * 1000
        log("counting queries and timing an in-process run")
        result.update(measure_queries(args.steps))
        result["inproc_steps_per_s"] = measure_inprocess()
        if args.profile:
            print(profile_run(), file=sys.stderr)
        close_connections()
        keep_log = False

        if args.json:
            print(json.dumps(result, sort_keys=True))
        else:
            print(render(result))
        return 1 if result["failed"] else 0
    except BenchError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if cluster is not None:
            cluster.stop()
        close_connections()
        database.drop()
        if not keep_log:
            with contextlib.suppress(FileNotFoundError):
                log_file.unlink()


if __name__ == "__main__":
    sys.exit(main())
