"""Start real `manage.py qcluster` processes against the test database."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parents[2]
TEST_WORKFLOW_MODULES = [
    "tests.workflows.sample_workflows",
    "tests.workflows.agents.sample_agents",
    "tests.workflows.runtime_workflows",
]


def test_database_url() -> str:
    """DATABASE_URL of the database the test run created, for subprocesses."""
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
    the sentinel and every worker)."""

    def __init__(self, *, workers: int = 2, env: dict[str, str] | None = None) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": test_database_url(),
            "DATABASE_CONN_MAX_AGE": "600",
            "WORKFLOWS_EXTRA_MODULES": ",".join(TEST_WORKFLOW_MODULES),
            "Q_WORKERS": str(workers),
            "Q_SYNC": "0",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        # The cluster's output, for a failing test to show (pytest prints it on failure).
        self.log = tempfile.TemporaryFile()

    def start(self) -> "QCluster":
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=self.env,
            start_new_session=True,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        return self

    def kill(self) -> None:
        """SIGKILL the whole cluster: no clean-up, no acknowledgement, as in a crash."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, *, timeout: float = 35) -> None:
        """SIGTERM to the parent: the cluster drains (up to WORKFLOWS_DRAIN_SECONDS)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def terminate_group(self) -> None:
        """SIGTERM to every process of the cluster, as systemd's KillMode=control-group."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def __enter__(self) -> "QCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 30, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
