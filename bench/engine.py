#!/usr/bin/env python
"""Throughput benchmark of the workflow engine against its database's commit rate.

    python bench/engine.py [--runs N=200] [--steps K=10] [--workers W=2]
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
import math
import os
import pstats
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_ID = "bench.noop"
PG_BENCH_DB = "bench_engine"
COMMIT_LOOPS = 2000
INPROC_STEPS = 100


class BenchError(Exception):
    """A failure reported as one line, exit status 2."""


_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


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


# -- the database this benchmark owns -------------------------------------------------


def display_url(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


class BenchDatabase:
    """A benchmark's own database, removed on `drop()`: a temp SQLite file, or database
    `name` (re)created on the PostgreSQL server of `url`, whose own database is only
    used to issue CREATE/DROP DATABASE. Shared by every script under bench/."""

    def __init__(self, url: str, name: str = PG_BENCH_DB) -> None:
        self.source_url = url
        self.name = name
        scheme = urlsplit(url).scheme if url else "sqlite"
        self.is_postgres = scheme in {"postgres", "postgresql", "pgsql"}
        if not self.is_postgres and scheme != "sqlite":
            raise BenchError(f"unsupported database URL scheme {scheme!r} (sqlite or postgres)")
        self.sqlite_path = Path(tempfile.gettempdir()) / f"{name}-{os.getpid()}.sqlite3"
        self.url = ""

    def _admin_conninfo(self) -> str:
        parts = urlsplit(self.source_url)
        if parts.path.lstrip("/") in {"", self.name}:
            parts = parts._replace(path="/postgres")
        return urlunsplit(parts._replace(scheme="postgresql"))

    def _admin(self, *statements: str) -> None:
        import psycopg

        try:
            with psycopg.connect(self._admin_conninfo(), autocommit=True, connect_timeout=5) as c:
                for statement in statements:
                    c.execute(statement)
        except psycopg.OperationalError as exc:
            reason = " ".join(str(exc).split())[:200]
            raise BenchError(
                f"PostgreSQL unreachable at {display_url(self.source_url)}: {reason}"
            ) from None

    def create(self) -> str:
        if self.is_postgres:
            self._admin(
                f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)",
                f"CREATE DATABASE {self.name}",
            )
            self.url = urlunsplit(urlsplit(self.source_url)._replace(path=f"/{self.name}"))
        else:
            self._remove_sqlite_files()
            self.url = f"sqlite:///{self.sqlite_path}"
        return self.url

    def drop(self) -> None:
        if not self.url:
            return
        if self.is_postgres:
            with contextlib.suppress(BenchError):
                self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        else:
            self._remove_sqlite_files()

    def _remove_sqlite_files(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.sqlite_path}{suffix}").unlink()


def bench_env(database_url: str, workers: int) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "polos_site.settings",
        "WORKFLOWS_EXTRA_MODULES": "bench.bench_workflows",
        "DATABASE_URL": database_url,
        "DATABASE_CONN_MAX_AGE": "600",
        # Production settings: DEBUG's query log and cursor wrapper are not measured.
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "bench-only-secret-key-not-for-any-deployment-0123456789",
        "LLM_PROVIDER": "simulated",
        "PAYMENT_GATEWAY": "simulated",
        "Q_WORKERS": str(workers),
        "Q_SYNC": "0",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("REDIS_URL", None)  # the ORM broker, on the benchmarked database
    return env


def migrate(env: dict[str, str]) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        raise BenchError("manage.py migrate took longer than 300 s") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
        raise BenchError(f"manage.py migrate failed: {lines[-1]}")


# -- the qcluster ----------------------------------------------------------------------


class Cluster:
    """`manage.py qcluster` in its own process group, so that every worker can be killed."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"],
                cwd=ROOT,
                env=self.env,
                start_new_session=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def exited(self) -> int | None:
        return self.process.poll() if self.process else None

    def _signal_group(self, sig: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    def stop(self) -> None:
        """SIGTERM the qcluster process (it drains its workers' segments, 25 s at most),
        SIGKILL the whole group after 35 s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=35)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # stray workers of the group, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").strip().splitlines()
            return " | ".join(text[-lines:])
        return ""


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(x) for x in task.read_text().split()]
    return found


def _rss_kib(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


class WorkerMemory(threading.Thread):
    """Samples every 0.2 s the resident memory of the qcluster's worker processes (the
    sentinel's children that run django-q2's worker: the largest ones), keeping each
    one's peak. `idle()` reads them once, before the load."""

    def __init__(self, cluster_pid: int, workers: int) -> None:
        super().__init__(daemon=True)
        self.cluster_pid = cluster_pid
        self.workers = workers
        self.peaks: dict[int, int] = {}
        self.done = threading.Event()

    def sample(self) -> dict[int, int]:
        processes = [
            (rss, pid)
            for sentinel in _children(self.cluster_pid)
            for pid in _children(sentinel)
            if (rss := _rss_kib(pid)) is not None
        ]
        return {pid: rss for rss, pid in sorted(processes, reverse=True)[: self.workers]}

    def run(self) -> None:
        while not self.done.wait(0.2):
            for pid, rss in self.sample().items():
                self.peaks[pid] = max(self.peaks.get(pid, 0), rss)

    def stop(self) -> dict[int, int]:
        self.done.set()
        self.join()
        return self.peaks


def cpu_sample() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def cpu_busy(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if not before or not after or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


# -- measurements (after django.setup()) -----------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def measure_commit_rate(loops: int = COMMIT_LOOPS) -> float:
    """Commits/s of one connection: one-row INSERT transactions, back to back."""
    from django.db import connection, transaction

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_scratch (id integer PRIMARY KEY, v integer NOT NULL)")
    started = time.perf_counter()
    for i in range(loops):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("INSERT INTO bench_scratch (id, v) VALUES (%s, %s)", [i, i])
    elapsed = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE bench_scratch")
    return loops / elapsed


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

    from workflows import queue, workflow_start

    with mock.patch.object(queue, "_send", lambda run_id: None):
        return workflow_start(WORKFLOW_ID, {"steps": k}).id


def _execute(run_id: Any) -> None:
    from workflows.executor import run_execute

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


def database_label() -> str:
    from django.db import connection

    if connection.vendor == "postgresql":
        version = connection.pg_version
        return f"postgresql {version // 10000}.{version % 10000}"
    return f"sqlite {sqlite3.sqlite_version} (WAL)"


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
    widths = [max(len(h), len(c)) for h, c in zip(header, row, strict=True)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |",
    ]
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
    database = BenchDatabase(args.database_url)
    cluster: Cluster | None = None
    log_file = Path(tempfile.gettempdir()) / f"bench-engine-{os.getpid()}-qcluster.log"
    keep_log = True
    try:
        url = database.create()
        env = bench_env(url, args.workers)
        os.environ.update(env)
        os.environ.pop("REDIS_URL", None)
        log(f"database {display_url(url) if database.is_postgres else url}: migrating")
        migrate(env)

        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.db import connections

        logging.getLogger("django-q").setLevel(logging.WARNING)  # one INFO line per enqueue

        label = database_label()
        log(f"{label}: {COMMIT_LOOPS} one-row commits")
        commits_per_s = measure_commit_rate()

        log(f"enqueueing {args.runs} runs of {WORKFLOW_ID} with {args.steps} steps")
        t0 = time.perf_counter()
        ids = enqueue_runs(args.runs, args.steps)
        enqueue_s = time.perf_counter() - t0

        log(f"starting qcluster with {args.workers} workers (log: {log_file})")
        cluster = Cluster(env, log_file)
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
        connections.close_all()
        keep_log = False

        if args.json:
            print(json.dumps(result, sort_keys=True))
        else:
            print(render(result))
        return 1 if result["failed"] else 0
    except BenchError as exc:
        print(f"bench/engine.py: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if cluster is not None:
            cluster.stop()
        if "django" in sys.modules:
            from django.db import connections

            with contextlib.suppress(Exception):
                connections.close_all()
        database.drop()
        if not keep_log:
            with contextlib.suppress(FileNotFoundError):
                log_file.unlink()


if __name__ == "__main__":
    sys.exit(main())
