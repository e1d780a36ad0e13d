"""The engine's periodic tasks as deployed: the Schedule rows the migration creates,
run by a real cluster's own scheduler (not called by hand)."""

from importlib import import_module
from pathlib import Path

import pytest
from django.apps import apps
from django_q.models import Schedule

from tests.support.cluster import QCluster, wait_past, wait_until
from tests.support.runs import status_of
from workflows import workflow_start
from workflows.models import RunStatus, StepRecord, WorkflowRun

pytestmark = pytest.mark.db_engine

SCHEDULES = import_module("workflows.migrations.0002_schedules")
FAST_SCHEDULER = {"DJANGO_SETTINGS_MODULE": "tests.workflows.fast_scheduler_settings"}
REAPER = "workflows: re-queue runs whose worker died"
EXPIRY = "workflows: expire overdue waits"


def schedules_recreate() -> None:
    """Transactional tests flush every table, the migration's rows included: create
    them again as the migration does (due at once: `next_run` defaults to now)."""
    SCHEDULES.create_schedules(apps, None)


@pytest.mark.django_db
def test_the_migration_creates_both_schedules():
    # A non-transactional test sees the database as `migrate` left it (pytest-django
    # runs these before any transactional test flushes it).
    rows = {s.name: s for s in Schedule.objects.filter(name__in=[REAPER, EXPIRY])}
    assert set(rows) == {REAPER, EXPIRY}
    assert rows[REAPER].func == "workflows.tasks.runs_reap_task"
    assert rows[EXPIRY].func == "workflows.tasks.waits_expire_task"
    for row in rows.values():
        assert (row.schedule_type, row.minutes, row.repeats) == (Schedule.MINUTES, 1, -1)
        assert row.cluster is None  # run by the default cluster


@pytest.mark.django_db(transaction=True)
@pytest.mark.qcluster
def test_the_clusters_schedule_reaps_a_killed_workers_run(tmp_path: Path):
    schedules_recreate()
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
    assert status_of(run) == RunStatus.RUNNING  # stranded: leased by a dead worker
    # Its lease expires; its task stays locked in the broker for minutes.
    wait_past(WorkflowRun.objects.get(pk=run.pk).lease_expires_at, timeout=15)

    with QCluster(env={**short_lease, **FAST_SCHEDULER}) as rescuer:
        try:
            wait_until(lambda: status_of(run) == RunStatus.COMPLETED, timeout=60)
        except AssertionError:
            raise AssertionError(rescuer.output()) from None

    run.refresh_from_db()
    assert run.output == {"total": sum(i * 2 for i in range(6))}
    assert run.attempts == 2  # taken over once, by the reaped re-delivery
    assert Schedule.objects.get(name=REAPER).task  # the schedule queued the reaper
