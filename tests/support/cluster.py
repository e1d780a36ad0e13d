"""Real `manage.py qcluster` processes, for the tests (against the test database) and the
benchmarks under bench/ (against a database of their own), and the environment they run in.
"""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
TEST_WORKFLOW_MODULES = [
    "tests.workflows.sample_workflows",
    "tests.workflows.agents.sample_agents",
    "tests.workflows.runtime_workflows",
]
# Production settings, as a benchmark runs the service: no DEBUG (its query log and cursor
# wrapper are not measured), the simulated model (without latency) and gateway, console
# email, warnings only, and the ORM broker on the benchmark's own database. None removes
# a variable.
PRODUCTION_SETTINGS: dict[str, str | None] = {
    "DJANGO_SETTINGS_MODULE": "polos_site.settings",
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": "bench-only-secret-key-not-for-any-deployment-0123456789abcdef",
    "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
    "DJANGO_SECURE_SSL_REDIRECT": "0",
    "DJANGO_SECURE_COOKIES": "0",
    "DJANGO_HSTS_SECONDS": "0",
    "LLM_PROVIDER": "simulated",
    "SIMULATED_MODEL_LATENCY": "0",
    "PAYMENT_GATEWAY": "simulated",
    "LOG_LEVEL": "WARNING",
    # The benchmark's clients send hundreds of orders a second, far above a client's quota.
    "API_THROTTLE_RATE": "100000/minute",
    "REDIS_URL": None,
    "OPENAI_API_KEY": None,
    "STRIPE_API_KEY": None,
    "EMAIL_HOST": None,
    "TEST_SQLITE_PATH": None,
}


def service_env(
    database_url: str,
    *,
    workers: int = 2,
    workflow_modules: Sequence[str] = (),
    production: bool = False,
    settings: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """The environment of a qcluster (or gunicorn, or `manage.py migrate`) subprocess:
    this process's, on `database_url`, with `workers` workers and the extra workflow
    modules; `production` adds PRODUCTION_SETTINGS; `settings` override (None removes)."""
    env: dict[str, str | None] = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DATABASE_CONN_MAX_AGE": "600",
        "WORKFLOWS_EXTRA_MODULES": ",".join(workflow_modules) or None,
        "Q_WORKERS": str(workers),
        "Q_SYNC": "0",
        "PYTHONUNBUFFERED": "1",
        **(PRODUCTION_SETTINGS if production else {}),
        **(settings or {}),
    }
    return {name: value for name, value in env.items() if value is not None}


def chaos_settings(
    stripe_server: Any, smtp_server: Any, *, model_latency: float, lease_seconds: float
) -> dict[str, str]:
    """A chaos run's qcluster (tests/orders/test_chaos.py, bench/chaos.py): the simulated
    model with some latency, so that kills land inside runs; the `stripe` gateway and SMTP
    on the local fakes; a short lease, so that the dead cluster's runs are reaped soon."""
    return {
        "LLM_PROVIDER": "simulated",
        "SIMULATED_MODEL_LATENCY": str(model_latency),
        "PAYMENT_GATEWAY": "stripe",
        "STRIPE_API_KEY": "sk_test_local",
        "STRIPE_API_BASE": stripe_server.base_url,
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp_server.port),
        "WORKFLOWS_LEASE_SECONDS": f"{lease_seconds:g}",
        "LOG_LEVEL": "WARNING",
    }


def test_database_url() -> str:
    """DATABASE_URL of the database the test run created, for subprocesses."""
    from django.db import connection

    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    user = settings.get("USER") or ""
    password = f":{settings['PASSWORD']}" if settings.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    host = settings.get("HOST") or "127.0.0.1"
    port = f":{settings['PORT']}" if settings.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{settings['NAME']}"


class QCluster:
    """A `manage.py qcluster` subprocess in its own process group (so SIGKILL reaches
    the sentinel and every worker).

    Tests: `QCluster(workers=2, env={...})` runs on the test database with the test
    workflows, `env` overriding. Benchmarks pass the whole environment as `environ` (from
    `service_env`) and a `log_path` to keep; without one the output goes to a temp file.
    """

    def __init__(
        self,
        *,
        workers: int = 2,
        env: Mapping[str, str | None] | None = None,
        environ: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        if environ is None:
            environ = service_env(
                test_database_url(),
                workers=workers,
                workflow_modules=TEST_WORKFLOW_MODULES,
                settings=env,
            )
        self.env = dict(environ)
        self.log_path = log_path
        # The cluster's output, for a failing test or benchmark to show.
        self.log: IO[bytes] = (
            open(log_path, "w+b") if log_path is not None else tempfile.TemporaryFile()
        )
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """What runs the cluster (a benchmark's profiling cluster runs another module)."""
        return [sys.executable, "manage.py", "qcluster"]

    def start(self) -> "QCluster":
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=self.env,
            start_new_session=True,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        return self

    def exited(self) -> int | None:
        """The exit status, or None while it runs (or before it started)."""
        return self.process.poll() if self.process else None

    def kill(self) -> None:
        """SIGKILL the whole cluster: no clean-up, no acknowledgement, as in a crash."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def stop(self, *, timeout: float = 35) -> None:
        """SIGTERM to the parent: the cluster drains (up to WORKFLOWS_DRAIN_SECONDS);
        then SIGKILL to what is left of the group, after `timeout` s at most."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        self.kill()

    def terminate_group(self) -> None:
        """SIGTERM to every process of the cluster, as systemd's KillMode=control-group."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)

    def output(self) -> str:
        fd = self.log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def log_tail(self, lines: int = 5) -> str:
        return " | ".join(self.output().strip().splitlines()[-lines:])

    def __enter__(self) -> "QCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_past(moment: datetime, *, timeout: float = 30) -> None:
    """Wait until the wall clock (what the database's deadlines and leases are compared
    with, here and in a cluster started after) is past `moment`."""
    from django.utils import timezone

    wait_until(lambda: timezone.now() > moment, timeout=timeout, interval=0.02)


def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 30, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def run_execute_together(run_id: Any, *, times: int = 2) -> list[str]:
    """Execute the run's segment from `times` threads released at the same moment (a
    task delivered twice): their outcomes, sorted."""
    import threading

    from django.db import connection

    from workflows.engine.executor import run_execute

    barrier = threading.Barrier(times)
    outcomes: list[str] = []

    def deliver() -> None:
        barrier.wait()
        try:
            outcomes.append(run_execute(run_id))
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return sorted(outcomes)
