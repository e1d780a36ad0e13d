"""A pending run whose queued task was lost (its cluster was SIGKILLed holding it, or it
was acknowledged before the segment took the lease) is queued again by the reaper within
WORKFLOWS_PENDING_REQUEUE_SECONDS, even while other runs' tasks wait in the queue, and
never executes two segments at once. Against django-q2's real ORM broker."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from tests.support.cluster import run_execute_together, wait_until
from tests.workflows.sample_workflows import journal_lines
from workflows import workflow_start
from workflows.engine.executor import run_execute
from workflows.engine.queue import EXECUTE_TASK, runs_waiting
from workflows.engine.services import runs_reap
from workflows.models import RunStatus, WorkflowRun
from workflows.worker.runtime import WorkerRuntime

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_engine]

BOUND = 60  # WORKFLOWS_PENDING_REQUEUE_SECONDS


@pytest.fixture(autouse=True)
def orm_broker(settings):
    if Conf.ORM != "default" or Conf.SYNC:
        pytest.skip("reads django-q2's ORM broker on the default database")
    settings.WORKFLOWS_PENDING_REQUEUE_SECONDS = BOUND


def task_rows(run_id) -> list[OrmQ]:
    """The broker's rows for `run_id`'s segments."""
    rows = []
    for row in OrmQ.objects.all():
        task = SignedPackage.loads(row.payload)
        if task["func"] == EXECUTE_TASK and task["args"][0] == str(run_id):
            rows.append(row)
    return rows


def age(*runs: WorkflowRun, seconds: float) -> None:
    """The runs have been pending this long."""
    then = timezone.now() - timedelta(seconds=seconds)
    WorkflowRun.objects.filter(pk__in=[r.pk for r in runs]).update(updated_at=then)


def held_by_killed_cluster(run: WorkflowRun) -> None:
    # What the pusher's dequeue did before the SIGKILL: locked for the broker's retry.
    [row] = task_rows(run.pk)
    OrmQ.objects.filter(pk=row.pk).update(lock=timezone.now() + timedelta(seconds=Conf.RETRY))


def acknowledged_before_the_lease(run: WorkflowRun) -> None:
    # The worker accepted the run (django-q2 deleted the task), then died before taking it.
    [row] = task_rows(run.pk)
    row.delete()


@pytest.mark.parametrize("lose", [held_by_killed_cluster, acknowledged_before_the_lease])
def test_a_lost_task_is_queued_again_though_other_tasks_wait(lose, tmp_path: Path):
    lost = workflow_start("test.counting", {"steps": 2, "journal": str(tmp_path / "j")})
    waiting = workflow_start("test.counting", {"steps": 1})
    lose(lost)
    assert runs_waiting([lost.pk, waiting.pk]) == {str(waiting.pk)}

    age(lost, waiting, seconds=BOUND - 5)
    assert runs_reap() == []  # within the bound nothing is touched

    age(lost, waiting, seconds=BOUND + 1)
    # The waiting run's task is still in the queue: it is waiting its turn, not lost.
    assert runs_reap() == [lost.pk]
    assert len(task_rows(lost.pk)) == 1 + (lose is held_by_killed_cluster)
    assert len(task_rows(waiting.pk)) == 1
    assert runs_waiting([lost.pk]) == {str(lost.pk)}
    assert WorkflowRun.objects.get(pk=lost.pk).updated_at > timezone.now() - timedelta(seconds=5)

    # Its new task waits now: a second reaper, even past the bound, queues nothing more.
    age(lost, waiting, seconds=BOUND + 1)
    assert runs_reap() == []

    assert run_execute(lost.pk) == "completed"
    assert journal_lines(tmp_path / "j") == ["step-0", "step-1"]


def test_a_duplicate_task_never_runs_a_second_segment_alongside(tmp_path: Path):
    """The reaper re-queues a run whose task a live cluster holds but is slow to start:
    both tasks are delivered at once; one executes the run, the other skips it."""
    journal = tmp_path / "journal.txt"
    run = workflow_start(
        "test.counting", {"steps": 3, "journal": str(journal), "step_seconds": 0.2}
    )
    held_by_killed_cluster(run)  # to the reaper, a slow cluster and a dead one look alike
    age(run, seconds=BOUND + 1)
    assert runs_reap() == [run.pk]

    assert run_execute_together(run.pk) == ["completed", "skipped"]
    assert journal_lines(journal) == ["step-0", "step-1", "step-2"]
    assert WorkflowRun.objects.get(pk=run.pk).attempts == 1


def test_a_worker_process_reaps_on_its_own_tick(settings):
    """Not only the minute's schedule: each worker process reaps every
    WORKFLOWS_REAP_SECONDS, so a crash is recovered about one lease after it."""
    settings.WORKFLOWS_REAP_SECONDS = 1
    run = workflow_start("test.counting", {"steps": 1})
    acknowledged_before_the_lease(run)
    age(run, seconds=BOUND + 1)
    runtime = WorkerRuntime(concurrency=2, sync_threads=1, wake_seconds=1)
    try:
        wait_until(lambda: len(task_rows(run.pk)) == 1, timeout=10)
    finally:
        runtime.stop(drain_seconds=5)
    assert WorkflowRun.objects.get(pk=run.pk).status == RunStatus.PENDING
