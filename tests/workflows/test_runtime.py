"""Many run segments per worker process, through real `qcluster` processes: concurrency,
back-pressure, a clean stop (SIGTERM to the process group, recycling) and a model
provider's rate limit."""

import itertools
import os
import signal
import threading
import time

import pytest
from django.utils import timezone

from tests.support.cluster import QCluster, wait_until
from tests.support.openai_server import reply_error, reply_text
from workflows import workflow_start
from workflows.models import ConcurrencySlot, RunStatus, StepRecord, WorkflowRun

# Runtime behaviour (signals, recycling, rate limits) is the worker's, whatever the
# database; the tests whose outcome is the database's or the broker's are marked.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.qcluster]


def start_runs(count: int, workflow_id: str, payload: dict) -> list[WorkflowRun]:
    return [workflow_start(workflow_id, payload) for _ in range(count)]


def statuses(runs: list[WorkflowRun]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in WorkflowRun.objects.filter(pk__in=[r.pk for r in runs]).values_list(
        "status", flat=True
    ):
        counts[status] = counts.get(status, 0) + 1
    return counts


def all_completed(runs: list[WorkflowRun]) -> bool:
    return statuses(runs) == {RunStatus.COMPLETED: len(runs)}


def call_records(runs: list[WorkflowRun]) -> list[dict]:
    outputs = WorkflowRun.objects.filter(pk__in=[r.pk for r in runs]).values_list(
        "output", flat=True
    )
    return [call for output in outputs for call in output["calls"]]


def most_overlapping(records: list[dict]) -> int:
    """The largest number of calls that were running at the same instant."""
    edges = sorted(
        itertools.chain(
            ((r["started"], 1) for r in records), ((r["finished"], -1) for r in records)
        ),
        key=lambda edge: (edge[0], edge[1]),
    )
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    return peak


@pytest.mark.db_engine  # 200 runs' steps through one process's connections
def test_one_worker_process_keeps_two_hundred_slow_runs_in_flight():
    runs = start_runs(200, "test.slow_calls", {"calls": 3, "seconds": 1.0})
    with QCluster(workers=1) as cluster:
        started = time.monotonic()
        wait_until(lambda: all_completed(runs), timeout=120, interval=0.5)
        elapsed = time.monotonic() - started
        assert all_completed(runs), cluster.output()
    records = call_records(runs)
    assert len({r["pid"] for r in records}) == 1  # one worker process did all of it
    # One at a time this is 600 s; 100 at a time about 6 s plus dispatch.
    assert elapsed < 60, f"200 runs of 3 x 1 s took {elapsed:.1f} s"
    assert max(r["in_flight"] for r in records) == 100  # WORKFLOWS_CONCURRENCY's default


@pytest.mark.broker
def test_a_full_worker_takes_no_more_tasks():
    runs = start_runs(50, "test.slow_calls", {"calls": 2, "seconds": 0.3})
    with QCluster(workers=1, env={"WORKFLOWS_CONCURRENCY": "5"}):
        wait_until(lambda: all_completed(runs), timeout=90, interval=0.2)
    records = call_records(runs)
    assert max(r["in_flight"] for r in records) == 5
    assert 3 <= most_overlapping(records) <= 5


def test_sigterm_to_the_process_group_drains_and_hands_runs_back():
    # Leases and the lost-task rule would take ten minutes: only the hand-back can
    # make the runs go on promptly.
    patient = {
        "WORKFLOWS_LEASE_SECONDS": "600",
        "WORKFLOWS_PENDING_REQUEUE_SECONDS": "600",
        "WORKFLOWS_DRAIN_SECONDS": "3",
    }
    runs = start_runs(40, "test.slow_calls", {"calls": 8, "seconds": 1.0})
    cluster = QCluster(workers=2, env=patient).start()
    try:
        wait_until(lambda: StepRecord.objects.filter(run__in=runs).count() >= 40, timeout=60)
        stopping = time.monotonic()
        cluster.terminate_group()
        cluster.process.wait(timeout=30)
        assert time.monotonic() - stopping < 30
    finally:
        cluster.kill()
    assert RunStatus.RUNNING not in statuses(runs), cluster.output()
    assert "handed" in cluster.output()

    with QCluster(workers=2, env=patient) as second:
        wait_until(lambda: all_completed(runs), timeout=60, interval=0.5)
        assert all_completed(runs), second.output()


def test_a_recycled_worker_strands_nothing():
    patient = {"WORKFLOWS_LEASE_SECONDS": "600", "WORKFLOWS_PENDING_REQUEUE_SECONDS": "600"}
    runs = start_runs(30, "test.slow_calls", {"calls": 2, "seconds": 0.5})
    with QCluster(workers=1, env={**patient, "Q_RECYCLE": "4"}):
        wait_until(lambda: all_completed(runs), timeout=60, interval=0.2)
    assert len({r["pid"] for r in call_records(runs)}) > 1


def test_a_rate_limit_storm_ends_with_every_run_completed(openai_server_session):
    server = openai_server_session
    server.reset()
    calls = itertools.count()
    refused = []
    lock = threading.Lock()

    def answer(request: dict):
        """The first 40 calls are a storm: three in four get 429 with Retry-After."""
        with lock:
            n = next(calls)
            if n < 40 and n % 4:
                refused.append(n)
                return reply_error(429, "Rate limit reached", retry_after_ms=300, delay=0.05)
        return reply_text('{"total": 5, "note": "after the storm"}', delay=0.2)

    server.respond_with(answer)
    runs = start_runs(24, "test.agent", {"question": "2+3?", "agent": "test.hasty"})
    env = {
        "LLM_PROVIDER": "openai",
        "OPENAI_API_KEY": "sk-test-not-a-real-key",
        "OPENAI_BASE_URL": server.base_url,
        "OPENAI_MAX_RETRIES": "0",
        "WORKFLOWS_MODEL_CONCURRENCY": "openai:gpt-4o-mini=3",
    }
    with QCluster(workers=2, env=env) as cluster:
        wait_until(lambda: all_completed(runs), timeout=90, interval=0.3)
        assert all_completed(runs), cluster.output()
    assert server.max_in_flight <= 3
    assert server.max_in_flight >= 2
    rate_limited = StepRecord.objects.filter(run__in=runs, kind="llm").values_list(
        "meta", flat=True
    )
    assert sum(meta.get("rate_limited", 0) for meta in rate_limited) == len(refused) == 30
    assert WorkflowRun.objects.get(pk=runs[0].pk).output["note"] == "after the storm"


@pytest.mark.db_engine  # the cap's rows, taken over across processes
def test_a_killed_workers_model_call_slots_go_to_a_live_worker_within_a_lease(
    openai_server_session,
):
    """A worker holding the only slot of a capped model is SIGKILLed mid-call: its slot
    comes back with its lease (renewed while it lived), and the other worker's waiting
    run takes it within one lease period, not after a long TTL."""
    lease = 3.0
    server = openai_server_session
    server.reset()
    first_call = threading.Event()

    def answer(request: dict):
        if not first_call.is_set():  # the call the killed worker makes: outlives it
            first_call.set()
            return reply_text('{"total": 5, "note": "too late"}', delay=20)
        return reply_text('{"total": 5, "note": "after the kill"}', delay=0.05)

    server.respond_with(answer)
    env = {
        "LLM_PROVIDER": "openai",
        "OPENAI_API_KEY": "sk-test-not-a-real-key",
        "OPENAI_BASE_URL": server.base_url,
        "OPENAI_MAX_RETRIES": "0",
        "WORKFLOWS_MODEL_CONCURRENCY": "openai:gpt-4o-mini=1",
        "WORKFLOWS_LEASE_SECONDS": f"{lease:g}",
        # One segment per worker: the worker holding the slot takes no other run, so the
        # other one waits for the slot.
        "WORKFLOWS_CONCURRENCY": "1",
    }
    slot = ConcurrencySlot.objects.filter(resource="openai:gpt-4o-mini")

    def holder_pid() -> int | None:
        row = slot.filter(expires_at__gt=timezone.now()).exclude(holder="").first()
        return int(row.holder.split(":")[1]) if row else None

    with QCluster(workers=2, env=env) as cluster:
        start_runs(1, "test.agent", {"question": "2+3?", "agent": "test.hasty"})
        wait_until(lambda: holder_pid() is not None and first_call.is_set(), timeout=60)
        dead = holder_pid()
        others = start_runs(3, "test.agent", {"question": "2+3?", "agent": "test.hasty"})
        running = WorkflowRun.objects.filter(status=RunStatus.RUNNING)
        wait_until(lambda: running.count() >= 2, timeout=30)
        # Renewed with the lease while the worker lives: held past one lease period.
        held_until = time.monotonic() + 1.5 * lease
        while time.monotonic() < held_until:
            assert holder_pid() == dead and len(server.chat_requests) == 1, cluster.output()
            time.sleep(0.1)

        os.kill(dead, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(lambda: holder_pid() not in (None, dead), timeout=3 * lease, interval=0.05)
        assert time.monotonic() - killed_at <= lease * 1.5
        # The live worker's waiting run makes its call and completes. (The killed
        # worker's own runs come back when the reaper finds their leases expired.)
        done = WorkflowRun.objects.filter(pk__in=[r.pk for r in others], status=RunStatus.COMPLETED)
        wait_until(done.exists, timeout=30, interval=0.2)
        assert done.first().output["note"] == "after the kill"
