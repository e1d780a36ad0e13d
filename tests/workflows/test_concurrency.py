"""Many deliveries, several clusters: a run is executed by one worker at a time."""

from pathlib import Path

import pytest
from django.db import connection

from tests.support.cluster import QCluster, wait_until
from tests.workflows.sample_workflows import journal_lines
from workflows import workflow_start
from workflows.models import RunStatus, WorkflowRun
from workflows.queue import run_enqueue

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.qcluster]


def test_two_clusters_never_execute_the_same_run_at_once(tmp_path: Path):
    if connection.vendor != "postgresql":
        pytest.skip("several qcluster machines share PostgreSQL, not SQLite (DATABASE_URL)")
    journals = [tmp_path / f"run-{i}.txt" for i in range(12)]
    runs = [workflow_start("test.exclusive", {"journal": str(j)}) for j in journals]
    for run in runs:  # every run delivered three times over
        run_enqueue(run.id)
        run_enqueue(run.id)
    with QCluster(workers=2), QCluster(workers=2):
        wait_until(
            lambda: WorkflowRun.objects.filter(status=RunStatus.COMPLETED).count() == len(runs),
            timeout=90,
        )
    pids = set()
    for journal in journals:
        lines = journal_lines(journal)
        expected = []
        for i in range(4):
            pid = lines[len(expected)].split()[0]
            expected += [f"{pid} enter {i}", f"{pid} exit {i}"]
            pids.add(pid)
        assert lines == expected, f"interleaved or repeated steps in {journal.name}: {lines}"
    assert len(pids) > 1  # both clusters took part
