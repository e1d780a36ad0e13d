"""The lease heartbeat (`LeaseKeeper`): a segment whose single step outlasts the lease
keeps its run; nobody takes it over, the reaper leaves it alone."""

import time

import pytest

from tests.support.cluster import QCluster, wait_until
from tests.support.runs import executing_inline, status_of
from workflows import workflow_start
from workflows.engine.leases import lease_take
from workflows.engine.services import runs_reap
from workflows.models import RunStatus, StepRecord, WorkflowRun

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_engine]


def assert_held_throughout(run: WorkflowRun, done, seconds: float) -> None:
    """Past the lease's duration, another worker cannot take the run, nor the reaper."""
    deadline = time.monotonic() + seconds
    checks = 0
    while time.monotonic() < deadline and not done():
        time.sleep(0.4)
        assert lease_take(run.id, "intruder") is None, "another worker took the run"
        assert runs_reap() == [], "the reaper took a run whose worker is alive"
        checks += 1
    assert checks >= 4


def test_a_step_longer_than_the_lease_keeps_its_run_inline(settings, queue_capture):
    settings.WORKFLOWS_LEASE_SECONDS = 1
    run = workflow_start("test.slow_calls", {"calls": 1, "seconds": 3.0})
    queue_capture.sent.clear()
    with executing_inline(run) as (segment, outcome):
        wait_until(lambda: status_of(run) == RunStatus.RUNNING, timeout=10)
        assert_held_throughout(run, lambda: not segment.is_alive(), seconds=2.6)
    assert outcome == ["completed"]
    run.refresh_from_db()
    assert run.attempts == 1
    assert StepRecord.objects.get(run=run, key="call/0").attempt == 1


@pytest.mark.qcluster
def test_a_step_longer_than_the_lease_keeps_its_run_in_a_worker(settings):
    settings.WORKFLOWS_LEASE_SECONDS = 2  # what the test process's reaper sees, too
    run = workflow_start("test.slow_calls", {"calls": 1, "seconds": 6.0})
    with QCluster(workers=1, env={"WORKFLOWS_LEASE_SECONDS": "2"}) as cluster:
        wait_until(lambda: status_of(run) == RunStatus.RUNNING, timeout=30)
        assert_held_throughout(run, lambda: status_of(run) != RunStatus.RUNNING, seconds=5)
        try:
            wait_until(lambda: status_of(run) == RunStatus.COMPLETED, timeout=30)
        except AssertionError:
            raise AssertionError(cluster.output()) from None
    run.refresh_from_db()
    assert run.attempts == 1
