"""The engine through real django-q2 `qcluster` processes: dispatch, and a worker
killed with SIGKILL in the middle of a run."""

from collections import Counter
from pathlib import Path

import pytest

from tests.support.cluster import QCluster, wait_until
from tests.support.runs import status_of
from tests.workflows.sample_workflows import journal_lines
from workflows import run_resume, workflow_start
from workflows.engine.services import runs_reap
from workflows.models import RunStatus, StepRecord

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.qcluster,
    pytest.mark.db_engine,
    pytest.mark.broker,
]


def test_qcluster_executes_suspends_and_resumes(tmp_path: Path):
    journal = tmp_path / "journal.txt"
    with QCluster():
        run = workflow_start("test.approval", {"journal": str(journal)})
        wait_until(lambda: status_of(run) == RunStatus.SUSPENDED)
        run_resume(run.id, "approval", {"approved": True})
        wait_until(lambda: status_of(run) == RunStatus.COMPLETED)
    run.refresh_from_db()
    assert run.output["approved"] is True
    assert journal_lines(journal) == ["prepare", "after"]
    assert run.attempts == 2  # two segments: start → suspend, resume → complete


def test_worker_killed_mid_run_is_reaped_and_completes(tmp_path: Path):
    journal = tmp_path / "journal.txt"
    short_lease = {"WORKFLOWS_LEASE_SECONDS": "2"}
    run = workflow_start(
        "test.counting", {"steps": 6, "journal": str(journal), "step_seconds": 0.3}
    )
    cluster = QCluster(env=short_lease).start()
    try:
        wait_until(lambda: StepRecord.objects.filter(run=run).count() >= 2, timeout=60)
        cluster.kill()
    finally:
        cluster.stop()
    committed_before_kill = set(StepRecord.objects.filter(run=run).values_list("key", flat=True))
    assert status_of(run) == RunStatus.RUNNING  # stranded: leased by a dead worker

    # Once the dead worker's lease expires, the reaper takes the run (and nothing else).
    wait_until(lambda: runs_reap() == [run.id], timeout=15, interval=0.1)
    with QCluster(env=short_lease):
        wait_until(lambda: status_of(run) == RunStatus.COMPLETED, timeout=60)

    run.refresh_from_db()
    assert run.output == {"total": sum(i * 2 for i in range(6))}
    executions = Counter(journal_lines(journal))
    for key in committed_before_kill:
        assert executions[key] == 1, f"{key} committed before the kill but ran again"
    # Only the step in flight at the kill may have run twice.
    assert sum(executions.values()) - 6 <= 1
    assert set(executions) == {f"step-{i}" for i in range(6)}
