"""`GET /metrics`: access, and the values after runs, in-process and through a real
`qcluster` (whose worker processes' values reach this process's scrape through
prometheus-client's multiprocess directory).

Process-local values are read as differences between two scrapes: the directory outlives
a test (as it outlives a process in production). Database-backed values are absolute."""

import json
import os
from collections import defaultdict
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.tasks import async_task
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster import QCluster, wait_until
from tests.support.openai_server import reply_error, reply_text
from workflows import observability, run_resume, workflow_start
from workflows.engine import queue
from workflows.engine.executor import run_execute
from workflows.models import RunStatus, StepRecord, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-test-token-0123456789"


class Scrape:
    """One scrape, parsed: `value(name, **labels)` sums the samples whose labels include
    `labels` (0 when there is none)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        return sum(
            v
            for n, sample_labels, v in self.samples
            if n == name and all(sample_labels.get(k) == w for k, w in labels.items())
        )

    def series(self, name: str) -> list[dict[str, str]]:
        return [labels for n, labels, _ in self.samples if n == name]


def scrape(client, token: str = TOKEN) -> Scrape:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/plain; version=")
    return Scrape(response.content.decode())


@pytest.fixture
def metrics_token(settings) -> str:
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


def committed_steps() -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for kind, status in StepRecord.objects.values_list("kind", "status"):
        counts[(kind, status)] += 1
    return counts


def step_count(before: Scrape, after: Scrape, kind: str, status: str) -> float:
    name = "workflows_step_duration_seconds_count"
    return after.value(name, kind=kind, status=status) - before.value(
        name, kind=kind, status=status
    )


# --- access ----------------------------------------------------------------------------


def test_metrics_answer_404_while_no_token_is_configured(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404


def test_metrics_need_the_bearer_token(client, metrics_token):
    for header in [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"]:
        extra = {"HTTP_AUTHORIZATION": header} if header is not None else {}
        response = client.get("/metrics", **extra)
        assert response.status_code == 401, header
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert b"workflows_" not in response.content
    assert "workflows_queue_depth" in scrape(client).text


# --- values --------------------------------------------------------------------------------


def test_scrape_after_a_mixed_set_of_runs(client, metrics_token, queue_capture, tmp_path):
    journal = str(tmp_path / "journal.txt")
    before = scrape(client)

    for _ in range(2):
        workflow_start("test.counting", {"steps": 3})
    workflow_start("test.flaky", {"journal": journal, "permanent": True})
    approval = workflow_start("test.approval", {})
    # A run whose worker died mid-segment: running, its lease expired.
    stranded = workflow_start("test.counting", {"steps": 1})
    queue_capture.sent.remove(str(stranded.id))
    WorkflowRun.objects.filter(pk=stranded.pk).update(
        status=RunStatus.RUNNING,
        lease_owner="dead-worker",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    assert sorted(queue_capture.drain()) == ["completed", "completed", "failed", "suspended"]
    assert run_execute(stranded.id) == "completed"  # taken over
    # Two tasks really queued (queue_capture intercepts only the engine's own sends).
    for _ in range(2):
        async_task("math.floor", 1.5, broker=queue._broker())
    after = scrape(client)

    # From the database: absolute, with zeros for the statuses no run is in.
    assert after.value("workflows_runs", workflow="test.counting", status="completed") == 3
    assert after.value("workflows_runs", workflow="test.counting", status="running") == 0
    assert after.value("workflows_runs", workflow="test.flaky", status="failed") == 1
    assert after.value("workflows_runs", workflow="test.approval", status="suspended") == 1
    assert {"workflow": "test.counting", "status": "cancelled"} in after.series("workflows_runs")
    assert after.value("workflows_queue_depth") == 2
    assert after.value("workflows_metrics_collector_up", collector="WorkflowsCollector") == 1

    # Process-local: one observation per committed step, by kind and status.
    rows = committed_steps()
    assert rows[("step", "completed")] == 2 * 3 + 1 + 1 + 1  # counting, flaky, prepare, taken over
    assert rows[("step", "failed")] == 1
    for kind, status in rows:
        assert step_count(before, after, kind, status) == rows[(kind, status)], (kind, status)
    assert step_count(before, after, "suspend", "waiting") == 1
    segments = "workflows_segments_total"
    for workflow_id, outcome, count in [
        ("test.counting", "completed", 3),
        ("test.flaky", "failed", 1),
        ("test.approval", "suspended", 1),
    ]:
        delta = after.value(segments, workflow=workflow_id, outcome=outcome) - before.value(
            segments, workflow=workflow_id, outcome=outcome
        )
        assert delta == count, (workflow_id, outcome)
    takeovers = "workflows_lease_takeovers_total"
    assert after.value(takeovers) - before.value(takeovers) == 1

    # Resuming replays `prepare` without executing it: only `after` is observed.
    run_resume(approval.id, "approval", {"approved": True})
    assert queue_capture.drain() == ["completed"]
    resumed = scrape(client)
    assert step_count(after, resumed, "step", "completed") == 1
    assert step_count(after, resumed, "suspend", "waiting") == 0
    assert resumed.value("workflows_runs", workflow="test.approval", status="completed") == 1
    # Not pending, not expired: a second delivery takes nothing and counts no take-over.
    assert run_execute(approval.id) == "skipped"
    assert scrape(client).value(takeovers) == resumed.value(takeovers)


def test_model_calls_tokens_and_429s_count_executed_calls_only(
    client, metrics_token, queue_capture, openai_server
):
    answer = json.dumps({"total": 5, "note": "added"})
    openai_server.script(
        [
            reply_error(429, "Rate limit reached", retry_after_ms=10),
            reply_text(answer, prompt_tokens=11, completion_tokens=7),
        ]
    )
    labels = {"provider": "openai", "model": "gpt-4o-mini"}
    before = scrape(client)
    run = workflow_start("test.agent", {"question": "What is 2 + 3?"})
    assert queue_capture.drain() == ["completed"]
    after = scrape(client)

    def delta(name: str, a: Scrape, b: Scrape, **extra: str) -> float:
        return b.value(name, **labels, **extra) - a.value(name, **labels, **extra)

    assert delta("workflows_model_calls_total", before, after) == 1
    assert delta("workflows_model_rate_limited_total", before, after) == 1
    assert delta("workflows_model_tokens_total", before, after, type="prompt") == 11
    assert delta("workflows_model_tokens_total", before, after, type="completion") == 7
    assert StepRecord.objects.get(run=run, key="ask/llm/1").meta["rate_limited"] == 1

    # Executing the run again replays the model call from its step: nothing is counted.
    WorkflowRun.objects.filter(pk=run.id).update(status=RunStatus.PENDING)
    assert run_execute(run.id) == "completed"
    replayed = scrape(client)
    assert len(openai_server.chat_requests) == 2
    for name in ["workflows_model_calls_total", "workflows_model_tokens_total"]:
        assert delta(name, after, replayed) == 0, name
    assert delta("workflows_model_rate_limited_total", after, replayed) == 0


def test_a_failing_collector_leaves_the_rest_of_the_scrape(client, metrics_token, monkeypatch):
    def broken(self):
        raise RuntimeError("database unavailable")

    monkeypatch.setattr(observability.WorkflowsCollector, "collect", broken)
    scraped = scrape(client)
    assert scraped.value("workflows_metrics_collector_up", collector="WorkflowsCollector") == 0
    assert scraped.value("workflows_metrics_collector_up", collector="OrdersCollector") == 1
    assert "workflows_step_duration_seconds" in scraped.text
    assert scraped.series("workflows_runs") == []


# --- through a real qcluster -------------------------------------------------------------


def worker_series(scraped: Scrape, name: str) -> dict[str, float]:
    """pid → value of a per-worker gauge, other processes than this one only."""
    return {
        labels["pid"]: value
        for n, labels, value in scraped.samples
        if n == name and labels.get("pid") != str(os.getpid())
    }


@pytest.mark.qcluster
def test_worker_processes_values_reach_the_scrape(client, metrics_token, settings):
    concurrency = 7
    before = scrape(client)
    runs = [workflow_start("test.counting", {"steps": 4, "step_seconds": 0.4}) for _ in range(3)]
    cluster = QCluster(workers=1, env={"WORKFLOWS_CONCURRENCY": str(concurrency)}).start()
    try:
        seen_busy: dict[str, float] = {}

        def busy() -> bool:
            in_flight = worker_series(scrape(client), "workflows_worker_runs_in_flight")
            seen_busy.update({pid: v for pid, v in in_flight.items() if v > 0})
            return bool(seen_busy)

        wait_until(busy, timeout=60, interval=0.1)
        during = scrape(client)
        free = worker_series(during, "workflows_worker_free_slots")
        in_flight = worker_series(during, "workflows_worker_runs_in_flight")
        assert set(free) == set(in_flight) and len(free) == 1, (free, in_flight)
        [pid] = free
        assert free[pid] + in_flight[pid] == concurrency
        wait_until(
            lambda: (
                WorkflowRun.objects.filter(
                    pk__in=[r.pk for r in runs], status=RunStatus.COMPLETED
                ).count()
                == 3
            ),
            timeout=60,
        )
        wait_until(
            lambda: worker_series(scrape(client), "workflows_worker_runs_in_flight") == {pid: 0.0},
            timeout=10,
        )
        after = scrape(client)
    finally:
        cluster.stop()
    print(cluster.output()[-3000:])

    # 12 steps and 3 segments, all executed in the worker process, seen from here.
    assert step_count(before, after, "step", "completed") == 12
    segments = {"workflow": "test.counting", "outcome": "completed"}
    assert (
        after.value("workflows_segments_total", **segments)
        - before.value("workflows_segments_total", **segments)
        == 3
    )
    assert after.value("workflows_runs", workflow="test.counting", status="completed") == 3
    assert worker_series(after, "workflows_worker_free_slots") == {pid: float(concurrency)}
    # The worker stopped: marked dead, its live gauges are gone; its counters stay.
    stopped = scrape(client)
    assert pid not in worker_series(stopped, "workflows_worker_runs_in_flight")
    assert pid not in worker_series(stopped, "workflows_worker_free_slots")
    assert step_count(before, stopped, "step", "completed") == 12
