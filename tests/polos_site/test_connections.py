"""Database connections stay bounded under load: the threaded web server and a
qcluster on PostgreSQL, with Django's connection pool in every process."""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from orders.roles import intake_client_create
from tests.support.cluster import ROOT, QCluster, wait_until
from tests.support.cluster import test_database_url as subprocess_database_url
from tests.support.requirements import skip_or_fail

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.qcluster, pytest.mark.db_engine]

ORDERS = 60
POLLS_PER_ORDER = 10
# More clients than a process's pool holds connections; no more than the development
# server's listen backlog (10), past which connections are refused whatever the pool.
CLIENTS = 10


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CLIENT_CONNECTIONS = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND backend_type = 'client backend'"
)


class ConnectionSampler(threading.Thread):
    """Counts the clients' connections to the test database every 20 ms, less those
    open before the servers started (this test's own) and the sampler's."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.peak = 0
        self.done = threading.Event()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            (count,) = conn.execute(CLIENT_CONNECTIONS).fetchone()
            self.baseline = count - 1

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.done.wait(0.02):
                (count,) = conn.execute(CLIENT_CONNECTIONS).fetchone()
                self.peak = max(self.peak, count - 1 - self.baseline)


def request(method: str, url: str, token: str, body: dict | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Token {token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.postgres
def test_web_and_workers_stay_within_the_documented_connection_budget():
    if connection.vendor != "postgresql":
        skip_or_fail("postgres", "connection pooling is PostgreSQL's (DATABASE_URL)")
    token = intake_client_create(username="client-load").token
    port = free_port()
    sampler = ConnectionSampler(subprocess_database_url().replace("postgres://", "postgresql://"))
    env = {**os.environ, "DATABASE_URL": subprocess_database_url(), "PYTHONUNBUFFERED": "1"}
    web = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    workers = 2
    try:
        wait_until(lambda: _answers(f"{base}/healthz"), timeout=30)
        with QCluster(workers=workers):
            sampler.start()

            def place_and_poll(n: int) -> list[int]:
                body = {
                    "order_id": f"conn-{n}",
                    "customer_id": "cus_good",
                    "customer_email": "ada@example.com",
                    "amount": "25.00",
                    "currency": "usd",
                }
                codes = [request("POST", f"{base}/api/orders/", token, body)]
                for _ in range(POLLS_PER_ORDER):
                    codes.append(request("GET", f"{base}/api/orders/conn-{n}/", token))
                    time.sleep(0.05)
                return codes

            with ThreadPoolExecutor(CLIENTS) as pool:
                codes = [
                    code for result in pool.map(place_and_poll, range(ORDERS)) for code in result
                ]
            sampler.done.set()
            sampler.join()
    finally:
        web.terminate()
        web.wait(timeout=15)

    assert set(codes) <= {200, 201}, sorted(set(codes))
    pool_size = settings.DATABASE_POOL_MAX_SIZE
    # docs/deploy.md: each web or worker process at most DATABASE_POOL_MAX_SIZE, plus
    # the cluster's sentinel, pusher and monitor one each.
    budget = pool_size * (1 + workers) + 3
    print(f"peak: {sampler.peak} connections, budget {budget}")
    assert 0 < sampler.peak <= budget, f"{sampler.peak} connections, budget {budget}"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
