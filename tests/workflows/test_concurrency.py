"""Many deliveries, several clusters: a run is executed by one worker at a time."""

from pathlib import Path

import pytest
from django.db import connection

from tests.support.cluster import QCluster, wait_until
from tests.support.requirements import skip_or_fail
from tests.workflows.cluster_workflows import MODULES
from tests.workflows.sample_workflows import journal_lines
from workflows import workflow_start
from workflows.engine.queue import run_enqueue
from workflows.models import RunStatus, WorkflowRun

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.qcluster, pytest.mark.db_engine]


@pytest.mark.postgres
def test_two_clusters_never_execute_the_same_run_at_once(tmp_path: Path):
    if connection.vendor != "postgresql":
        skip_or_fail(
            "postgres", "several qcluster machines share PostgreSQL, not SQLite (DATABASE_URL)"
        )
    journals = [tmp_path / f"run-{i}.txt" for i in range(12)]
    runs = [
        workflow_start("test.exclusive_where", {"journal": str(j), "step_seconds": 0.1})
        for j in journals
    ]
    for run in runs:  # every run delivered three times over
        run_enqueue(run.id)
        run_enqueue(run.id)
    # One segment per worker process at a time: neither cluster can take every run alone.
    env = {"WORKFLOWS_EXTRA_MODULES": MODULES, "WORKFLOWS_CONCURRENCY": "1"}
    with QCluster(workers=2, env=env) as first, QCluster(workers=2, env=env) as second:
        wait_until(
            lambda: WorkflowRun.objects.filter(status=RunStatus.COMPLETED).count() == len(runs),
            timeout=90,
        )
    clusters = {first.process.pid: set(), second.process.pid: set()}  # cluster → worker pids
    for run in WorkflowRun.objects.filter(pk__in=[r.pk for r in runs]):
        for step in run.output["steps"]:
            assert step["cluster"] in clusters, f"a step ran outside both clusters: {step}"
            clusters[step["cluster"]].add(step["pid"])
    assert all(clusters.values()), f"a cluster took no part: {clusters}"  # both took part
    pids = set()
    for journal in journals:
        lines = journal_lines(journal)
        expected = []
        for i in range(4):
            pid = lines[len(expected)].split()[0]
            expected += [f"{pid} enter {i}", f"{pid} exit {i}"]
            pids.add(pid)
        assert lines == expected, f"interleaved or repeated steps in {journal.name}: {lines}"
    assert pids == {str(pid) for pid in set().union(*clusters.values())}
