"""What the benchmarks under bench/ share: their own database, its migration, the
machine's CPU, the workers' memory, percentiles, tables; and the order flow end to end
(bench/order_flow.py, bench/latency.py).

Orders go in through the HTTP API served by gunicorn (production settings) and are
executed by `manage.py qcluster` workers; both run in their own process groups. The
benchmark process itself only reads the database (after `django.setup()`) to time what
happened, using the timestamps the engine stores (same machine clock as the client's).
The qcluster wrapper and the environment builder are the tests' (tests/support/cluster.py).

Run the scripts as modules from the repository's root: `python -m bench.engine`.
"""

import argparse
import contextlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tests.support.cluster import ROOT
from tests.support.servers import free_port

_ENV_URL = os.environ.get("DATABASE_URL", "")
ENV_IS_POSTGRES = _ENV_URL.startswith(("postgres://", "postgresql://"))
# A PostgreSQL DATABASE_URL in the environment names the server the benchmarks use.
DEFAULT_POSTGRES_URL = _ENV_URL if ENV_IS_POSTGRES else "postgres://postgres@127.0.0.1:5432/test"
REVIEWERS_GROUP = "Fraud reviewers"
COMMIT_LOOPS = 2000
_T0 = time.monotonic()


class BenchError(Exception):
    """A failure reported as one line, exit status 2."""


def make_logger(name: str) -> Callable[[str], None]:
    def log(message: str) -> None:
        print(f"[{name} {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)

    return log


# -- the database the benchmark owns ----------------------------------------------------


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
    used to issue CREATE/DROP DATABASE."""

    def __init__(self, url: str, name: str) -> None:
        self.source_url = url
        scheme = urlsplit(url).scheme if url else "sqlite"
        self.is_postgres = scheme in {"postgres", "postgresql", "pgsql"}
        # Its own name per process on PostgreSQL: other benchmarks may share the server.
        self.name = f"{name}_{os.getpid()}" if self.is_postgres else name
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

    def shown_url(self) -> str:
        return display_url(self.url) if self.is_postgres else self.url

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


class OwnDatabase(BenchDatabase):
    """`BenchDatabase` chosen by kind: a temp SQLite file, or database `name` on the
    PostgreSQL server of `server_url`."""

    def __init__(self, kind: str, name: str, server_url: str = DEFAULT_POSTGRES_URL) -> None:
        if kind not in {"sqlite", "postgres"}:
            raise BenchError(f"unknown database {kind!r} (sqlite or postgres)")
        super().__init__(server_url if kind == "postgres" else "", name)


def database_label() -> str:
    """After django.setup(): the server and its version."""
    from django.db import connection

    if connection.vendor == "postgresql":
        version = connection.pg_version
        return f"PostgreSQL {version // 10000}.{version % 10000}"
    return f"SQLite {sqlite3.sqlite_version} (WAL)"


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


def database_server_pid() -> int | None:
    """After django.setup(): the main process of the PostgreSQL server, when it runs on
    this machine, so that its CPU is measured as a process group ("postgres server":
    every backend, live or ended, and its background processes, whoever their client);
    None on SQLite (inside the project's processes) or for a server elsewhere."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone()
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path(f"/proc/{backend}/status").read_text().splitlines()
        parent = int(next(line for line in status if line.startswith("PPid:")).split()[1])
        if Path(f"/proc/{parent}/comm").read_text().strip() == "postgres":
            return parent
    return None


def setup_django(env: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(env)
    import django

    django.setup()


def close_connections() -> None:
    """Close Django's connections, if Django was set up (before the database is dropped)."""
    if "django" in sys.modules:
        from django.db import connections

        with contextlib.suppress(Exception):
            connections.close_all()


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


# -- the machine -------------------------------------------------------------------------


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


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def add_path_arguments(parser: argparse.ArgumentParser) -> None:
    """The switches of the benchmarks that run orders: which path (`--simulated`), which
    settings (`--mode`), and `--profile`."""
    parser.add_argument(
        "--simulated",
        action="store_true",
        help="the simulated model and gateway in the workers (no SDK, no local servers)",
    )
    parser.add_argument(
        "--mode",
        choices=["production", "serve"],
        default="production",
        help="production: gunicorn, DEBUG off; serve: scripts/serve.sh's runserver and defaults",
    )
    parser.add_argument(
        "--profile", metavar="DIR", default="", help="cProfile each worker; top frames in DIR"
    )


def comma_list(
    convert: Callable[[str], float], what: str, minimum: float, too_small: str
) -> Callable[[str], list[Any]]:
    """An argparse type: comma-separated `what`, each converted and at least `minimum`."""

    def parse(text: str) -> list[Any]:
        try:
            values = [convert(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a list of {what}: {text!r}") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(too_small)
        return values

    return parse


def run_reporting(prog: str, log: Callable[[str], None], work: Callable[[], int]) -> int:
    """`work()`'s exit status; a BenchError is one line and status 2, Ctrl-C (or SIGTERM,
    see `interrupt_on_sigterm`) status 130."""
    started = time.monotonic()
    try:
        status = work()
    except BenchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted", file=sys.stderr)
        return 130
    log(f"done in {time.monotonic() - started:.0f} s")
    return status


def interrupt_on_sigterm() -> None:
    """SIGTERM ends the benchmark like Ctrl-C: cleanup runs, then exit status 130."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while cleaning up (stopping servers, dropping the database):
    a second Ctrl-C must not leave processes or a database behind. They are delivered
    when the block ends."""
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def create_accounts() -> tuple[str, str]:
    """The client's and the reviewer's API tokens: the same user's, since the API decides
    only the reviews of the client's own orders. It is made as `create_api_token` makes
    a client (an intake client), then joins the reviewers."""
    from django.contrib.auth.models import Group

    from orders.roles import intake_client_create

    client = intake_client_create(username="bench-client")
    try:
        client.user.groups.add(Group.objects.get(name=REVIEWERS_GROUP))
    except Group.DoesNotExist:
        raise BenchError(f"no group {REVIEWERS_GROUP!r} after migrate") from None
    if client.token is None:  # shown only when made: the bench needs a fresh database
        raise BenchError("user 'bench-client' already had a token")
    return client.token, client.token


# -- the processes -----------------------------------------------------------------------


class WebServer:
    """gunicorn (2 sync workers) in its own process group; with `runserver`, Django's
    development server as `manage.py serve` (scripts/serve.sh) runs it."""

    def __init__(
        self, env: dict[str, str], log_path: Path, workers: int = 2, runserver: bool = False
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.workers = workers
        self.runserver = runserver
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        import requests

        gunicorn = Path(sys.executable).parent / "gunicorn"
        if not gunicorn.exists():
            raise BenchError(f"{gunicorn} not found: pip install -r requirements.txt")
        command = [
            str(gunicorn),
            "polos_site.wsgi",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(self.workers),
            "--timeout",
            "60",
        ]
        if self.runserver:
            command = [
                sys.executable,
                "manage.py",
                "runserver",
                "--noreload",
                f"127.0.0.1:{self.port}",
            ]
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env,
                start_new_session=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if (code := self.process.poll()) is not None:
                raise BenchError(f"web server exited with status {code}: {self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"web server did not answer /healthz within {timeout:g} s")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the arbiter stops its workers
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self.process = None

    def exited(self) -> int | None:
        return self.process.poll() if self.process else None

    def log_tail(self, lines: int = 3) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").strip().splitlines()
            return " | ".join(text[-lines:])
        return ""


# -- the orders ----------------------------------------------------------------------------


def order_mix(n: int, prefix: str) -> list[dict[str, str]]:
    """Deterministic mix: 10 % over the threshold (suspend), 5 % exactly 1000.00, 1 in 40
    declined (cents .13 for the simulated gateway, customer `cus_declined` for it and the
    local Stripe server), the rest small."""
    orders = []
    for i in range(n):
        if i % 10 == 5:
            amount = Decimal("1000.01") + 250 * (i % 7)
        elif i % 20 == 3:
            amount = Decimal("1000.00")
        elif i % 40 == 17:
            amount = Decimal(f"{20 + i % 50}.13")
        else:
            cents = (i * 7) % 100
            amount = Decimal(f"{5 + (i * 37) % 400}.{14 if cents == 13 else cents:02d}")
        declined = str(amount).endswith(".13")
        orders.append(
            {
                "order_id": f"{prefix}-{i:05d}",
                "customer_id": "cus_declined" if declined else f"cus_bench_{i % 97}",
                "customer_email": f"buyer{i}@example.com",
                "amount": f"{amount:.2f}",
                "currency": "usd",
            }
        )
    return orders


def expected_status(amount: str) -> str:
    """What the order should end as (before any review)."""
    value = Decimal(amount)
    if value.as_tuple().exponent == -2 and str(value).endswith(".13"):
        return "failed"
    return "awaiting_review" if value > Decimal("1000.00") else "completed"


@dataclass
class Submission:
    order_id: str
    amount: str
    sent: float  # client clock, just before the request
    answered: float = 0.0
    http_status: int = 0
    run_id: str = ""
    error: str = ""


@dataclass
class Api:
    base_url: str
    client_token: str
    reviewer_token: str
    _local: threading.local = field(default_factory=threading.local)

    def _session(self) -> Any:
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def submit(self, payload: dict[str, str]) -> Submission:
        import requests

        sub = Submission(order_id=payload["order_id"], amount=payload["amount"], sent=time.time())
        try:
            response = self._session().post(
                f"{self.base_url}/api/orders/",
                json=payload,
                headers={"Authorization": f"Token {self.client_token}"},
                timeout=60,
            )
        except requests.RequestException as exc:
            sub.answered, sub.error = time.time(), f"{type(exc).__name__}: {exc}"
            return sub
        sub.answered, sub.http_status = time.time(), response.status_code
        if response.status_code == 201:
            sub.run_id = response.json().get("run_id") or ""
        else:
            sub.error = response.text[:200]
        return sub

    def decide(self, order_id: str, approved: bool = True) -> tuple[float, int, str]:
        """POST the review decision; (client time of the response, status, error text)."""
        import requests

        try:
            response = self._session().post(
                f"{self.base_url}/api/orders/{order_id}/review/",
                json={"approved": approved, "note": "bench"},
                headers={"Authorization": f"Token {self.reviewer_token}"},
                timeout=60,
            )
        except requests.RequestException as exc:
            return time.time(), 0, f"{type(exc).__name__}: {exc}"
        answered = time.time()
        return answered, response.status_code, "" if response.ok else response.text[:200]


def submit_all(api: Api, payloads: list[dict[str, str]], clients: int) -> list[Submission]:
    with ThreadPoolExecutor(max_workers=clients) as pool:
        submissions = list(pool.map(api.submit, payloads))
    bad = [s for s in submissions if s.http_status != 201 or not s.run_id]
    if bad:
        first = bad[0]
        raise BenchError(
            f"{len(bad)}/{len(submissions)} submissions failed, e.g. {first.order_id}: "
            f"HTTP {first.http_status} {first.error}"
        )
    return submissions


SETTLED_RUN_STATUSES = ("completed", "failed", "suspended", "cancelled")


def wait_runs(
    run_ids: list[str],
    statuses: Iterable[str],
    timeout: float,
    processes: Iterable[Any],
    what: str,
    poll: float = 0.1,
) -> None:
    """Poll the database until every run is in one of `statuses`."""
    from workflows.models import WorkflowRun

    wanted = list(statuses)
    deadline = time.monotonic() + timeout
    while True:
        done = WorkflowRun.objects.filter(pk__in=run_ids, status__in=wanted).count()
        if done == len(run_ids):
            return
        for process in processes:
            if (code := process.exited()) is not None:
                name = type(process).__name__
                raise BenchError(f"{name} exited with status {code}: {process.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"only {done}/{len(run_ids)} {what} within {timeout:g} s")
        time.sleep(poll)


@dataclass
class Settled:
    order_id: str
    run_id: str
    order_status: str
    run_status: str
    started: float  # run.started_at
    settled: float  # run.finished_at, or the suspend wait's created_at
    suspended: bool


def _ts(value: datetime | None) -> float:
    return value.timestamp() if value is not None else float("nan")


def settled_orders(submissions: list[Submission]) -> dict[str, Settled]:
    """By order id: how and when each order's run settled (first segment)."""
    from orders.models import FRAUD_REVIEW_KEY, Order
    from workflows.models import Wait

    ids = [s.order_id for s in submissions]
    rows = Order.objects.filter(order_id__in=ids).values_list(
        "order_id", "run_id", "status", "run__status", "run__started_at", "run__finished_at"
    )
    suspends = dict(
        Wait.objects.filter(run__order__order_id__in=ids, key=FRAUD_REVIEW_KEY).values_list(
            "run__order__order_id", "created_at"
        )
    )
    result = {}
    for order_id, run_id, order_status, run_status, started, finished in rows:
        suspended_at = suspends.get(order_id)
        result[order_id] = Settled(
            order_id=order_id,
            run_id=str(run_id),
            order_status=order_status,
            run_status=run_status,
            started=_ts(started),
            settled=_ts(suspended_at if suspended_at is not None else finished),
            suspended=suspended_at is not None,
        )
    return result


def check_outcomes(submissions: list[Submission], settled: dict[str, Settled]) -> list[str]:
    """Orders that did not end as the mix intends (one line each)."""
    wrong = []
    for sub in submissions:
        got = settled.get(sub.order_id)
        want = expected_status(sub.amount)
        if got is None or got.order_status != want:
            status = got.order_status if got else "missing"
            run = got.run_status if got else "-"
            wrong.append(f"{sub.order_id} ({sub.amount}): {status} (run {run}), expected {want}")
    return wrong


def steps_between(start: float, end: float) -> int:
    """StepRecords whose finished_at falls in [start, end] (epoch seconds)."""
    from workflows.models import StepRecord

    return StepRecord.objects.filter(
        finished_at__gte=datetime.fromtimestamp(start, UTC),
        finished_at__lte=datetime.fromtimestamp(end, UTC),
    ).count()


def llm_calls(run_ids: list[str], until: float | None = None) -> int:
    from workflows.models import StepRecord

    steps = StepRecord.objects.filter(run_id__in=run_ids, kind="llm")
    if until is not None:
        steps = steps.filter(finished_at__lte=datetime.fromtimestamp(until, UTC))
    return steps.count()


def review_sequential(
    api: Api, orders: list[Settled], timeout: float, processes: Iterable[Any]
) -> list[float]:
    """Approve each suspended order in turn and wait for its run to complete: seconds
    from the review POST's response to the run's finished_at, per order."""
    from workflows.models import WorkflowRun

    processes = list(processes)
    latencies = []
    for order in orders:
        answered, status, error = api.decide(order.order_id)
        if status != 200:
            raise BenchError(f"review of {order.order_id}: HTTP {status} {error}")
        deadline = time.monotonic() + timeout
        while True:
            run = WorkflowRun.objects.filter(pk=order.run_id).values("status", "finished_at")[0]
            if run["status"] in ("completed", "failed"):
                break
            for process in processes:
                if (code := process.exited()) is not None:
                    raise BenchError(f"{type(process).__name__} exited with status {code}")
            if time.monotonic() > deadline:
                raise BenchError(f"{order.order_id} not completed {timeout:g} s after approval")
            time.sleep(0.005)
        if run["status"] != "completed":
            raise BenchError(f"{order.order_id}: run {run['status']} after approval")
        latencies.append(run["finished_at"].timestamp() - answered)
    return latencies


def review_all_at_once(
    api: Api, orders: list[Settled], clients: int, timeout: float, processes: Iterable[Any]
) -> list[float]:
    """Approve every suspended order concurrently; the same latencies as above."""
    from workflows.models import WorkflowRun

    with ThreadPoolExecutor(max_workers=clients) as pool:
        answers = list(pool.map(lambda o: api.decide(o.order_id), orders))
    for order, (_, status, error) in zip(orders, answers, strict=True):
        if status != 200:
            raise BenchError(f"review of {order.order_id}: HTTP {status} {error}")
    run_ids = [o.run_id for o in orders]
    wait_runs(run_ids, ("completed", "failed"), timeout, processes, "approved runs finished")
    finished = {
        str(run_id): at
        for run_id, at in WorkflowRun.objects.filter(pk__in=run_ids).values_list(
            "id", "finished_at"
        )
    }
    return [
        finished[order.run_id].timestamp() - answered
        for order, (answered, _, _) in zip(orders, answers, strict=True)
    ]


def concurrency(intervals: list[tuple[float, float]]) -> tuple[int, float, float]:
    """(max, time-weighted mean, window) of how many intervals overlap, over the window
    from the first start to the last end."""
    intervals = [(a, b) for a, b in intervals if b >= a]
    if not intervals:
        return 0, 0.0, 0.0
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    start, end = events[0][0], events[-1][0]
    current = peak = 0
    area, last = 0.0, start
    for moment, delta in events:
        area += current * (moment - last)
        last = moment
        current += delta
        peak = max(peak, current)
    window = end - start
    return peak, (area / window if window > 0 else float(peak)), window


def ms(values: list[float], p: float) -> float:
    return percentile(values, p) * 1000


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (bench/README.md pastes them), as wide as its cells."""
    table = Table(box=box.MARKDOWN, show_edge=True, pad_edge=True)
    for header in headers:
        table.add_column(Text(header), no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    console = Console(width=100_000, color_system=None, highlight=False, emoji=False)
    with console.capture() as captured:
        console.print(table)
    return "\n".join(line.rstrip() for line in captured.get().splitlines()).strip("\n")


# -- CPU per process group -----------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_ticks(pid: int, *, children: bool) -> int:
    """utime+stime of `pid` (and, with `children`, of its reaped descendants: cutime+cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    ticks = int(fields[11]) + int(fields[12])
    return ticks + (int(fields[13]) + int(fields[14]) if children else 0)


def process_cpu_s(pid: int) -> float | None:
    """utime+stime of `pid` so far, in seconds; None if no such process runs here."""
    if not Path(f"/proc/{pid}/stat").exists():
        return None
    return _stat_ticks(pid, children=False) / CLK_TCK


def _tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += _children(current)
    return found


def _threads(pid: int) -> int:
    with contextlib.suppress(OSError):
        return len(list(Path(f"/proc/{pid}/task").iterdir()))
    return 0


class ProcessGroups:
    """CPU seconds of named process trees (each process, its live descendants and the ones
    it has reaped), from /proc: `sample()` before and after a window, `ms_per(...)` per
    item. "workers" (the qcluster's `workers` worker processes alone: those with the most
    threads, their event loop's, sync threads and lease keeper; the parent, sentinel,
    pusher and monitor have one or two, plus a connection pool's on PostgreSQL) is added
    when a group named "qcluster" exists; "bench" is this process (its HTTP clients and
    its polling), without its children."""

    def __init__(self, roots: dict[str, int], workers: int = 0) -> None:
        self.roots = roots
        self.workers = workers

    @classmethod
    def of_service(
        cls, *, web_pid: int, cluster_pid: int, local_servers: dict[str, int], workers: int
    ) -> "ProcessGroups":
        """The groups of a benchmark of the whole service, after django.setup(): web,
        qcluster (and its workers), each local server, and the PostgreSQL server when it
        runs on this machine."""
        roots = {"web": web_pid, "qcluster": cluster_pid, **local_servers}
        if (server := database_server_pid()) is not None:
            roots["postgres server"] = server
        return cls(roots, workers=workers)

    def sample(self) -> dict[str, float]:
        seconds = {
            name: sum(_stat_ticks(p, children=True) for p in _tree(pid)) / CLK_TCK
            for name, pid in self.roots.items()
        }
        if "qcluster" in self.roots:
            tree = sorted(_tree(self.roots["qcluster"]), key=_threads, reverse=True)
            workers = tree[: self.workers]
            seconds["workers"] = sum(_stat_ticks(p, children=True) for p in workers) / CLK_TCK
            seconds["worker pids"] = float(len(workers))
        seconds["bench"] = _stat_ticks(os.getpid(), children=False) / CLK_TCK
        return seconds

    @staticmethod
    def ms_per(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
        """CPU ms per item of each group over the window; "project" is web + qcluster."""
        per = {
            name: (after[name] - before.get(name, 0.0)) * 1000 / count
            for name in after
            if name != "worker pids"
        }
        per["project"] = per.get("web", 0.0) + per.get("qcluster", 0.0)
        return per


CPU_COLUMNS = (
    "project",
    "web",
    "qcluster",
    "workers",
    "openai server",
    "stripe server",
    "smtp server",
    "postgres server",
    "bench",
)


def render_cpu(rows: list[tuple[str, dict[str, float]]]) -> str:
    """CPU ms per order by process group, one row per configuration."""
    present = [c for c in CPU_COLUMNS if any(c in cpu for _, cpu in rows)]
    headers = ["configuration", *(f"{c} ms/order" for c in present)]
    body = [
        [label, *(f"{cpu[c]:.1f}" if c in cpu else "-" for c in present)] for label, cpu in rows
    ]
    return render_table(headers, body)


# -- the service's processes: web (gunicorn, or runserver as scripts/serve.sh) and qcluster --

# `manage.py serve` (scripts/serve.sh) runs `runserver --noreload` and `qcluster` with the
# development defaults: DEBUG on, INFO logs. Only the real path's servers and the
# throttle (the benchmark's one client sends far more than a client's quota) are set.
SERVE_SETTINGS: dict[str, str | None] = {
    "DJANGO_DEBUG": None,
    "LOG_LEVEL": None,
    "DJANGO_SETTINGS_MODULE": "polos_site.settings",
    "API_THROTTLE_RATE": "100000/minute",
    "REDIS_URL": None,
    "TEST_SQLITE_PATH": None,
}
PROFILE_ENV = "BENCH_PROFILE_DIR"  # read by bench/profiled_qcluster.py in each worker


def mode_env(
    database_url: str,
    *,
    workers: int,
    mode: str,
    settings: dict[str, str | None] | None = None,
) -> dict[str, str]:
    """The service's environment for a benchmark mode: "production" (gunicorn, DEBUG off)
    or "serve" (scripts/serve.sh's settings)."""
    from tests.support.cluster import service_env

    if mode == "serve":
        return service_env(
            database_url, workers=workers, settings={**SERVE_SETTINGS, **(settings or {})}
        )
    return service_env(database_url, workers=workers, production=True, settings=settings)


def mode_label(args: argparse.Namespace) -> str:
    """What a benchmark measured, from its `--simulated` and `--mode`."""
    path = "simulated model and gateway" if args.simulated else "real SDKs"
    web = "runserver, DEBUG on (serve.sh)" if args.mode == "serve" else "gunicorn, production"
    return f"{path}; {web}"


def run_details(result: dict[str, Any]) -> list[str]:
    """The indented report lines of one benchmark configuration: what the local servers
    served, where the workers' profile went, and any unexpected outcome."""
    lines = []
    if result["served"]:
        lines.append(f"  local servers served: {json.dumps(result['served'], sort_keys=True)}")
    if "profile" in result:
        lines.append(f"  workers' profile: {result['profile']}")
    lines.extend(f"  unexpected outcome: {wrong}" for wrong in result["wrong_outcomes"])
    return lines


def bench_cluster(env: dict[str, str], log_path: Path, profile_dir: Path | None = None) -> Any:
    """A `QCluster` on `env`; with `profile_dir`, each worker process runs under cProfile
    (bench/profiled_qcluster.py) and writes its top frames there when it stops."""
    from tests.support.cluster import QCluster

    if profile_dir is None:
        return QCluster(environ=env, log_path=log_path)

    class ProfiledCluster(QCluster):
        def command(self) -> list[str]:
            return [sys.executable, "-m", "bench.profiled_qcluster"]

    return ProfiledCluster(environ={**env, PROFILE_ENV: str(profile_dir)}, log_path=log_path)
