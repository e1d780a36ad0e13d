"""Which commits wait for the disk (`workflows.engine.durability`): a worker's do not,
except the ones in `durable_atomic`; every other process's always do."""

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.db.backends.signals import connection_created

from tests.support.cluster import QCluster, wait_until
from tests.support.runs import status_of
from tests.workflows.runtime_workflows import commits_wait
from workflows import workflow_start
from workflows.engine import durability
from workflows.engine.durability import commits_relax, durable_atomic
from workflows.models import RunStatus

pytestmark = [pytest.mark.db_engine, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def relaxed() -> Iterator[None]:
    """This process as a worker's: relaxed, then put back (connections reopened; a
    PostgreSQL pool's too, whose connections keep their session's settings)."""
    commits_relax()
    yield
    connection_created.disconnect(dispatch_uid=durability.__name__)
    durability._relaxed = False
    durability._relaxed_postgresql.clear()
    connections.close_all()
    for each in connections.all():
        if getattr(each, "pool", None) is not None:
            each.close_pool()


def test_a_process_that_is_not_a_worker_commits_durably() -> None:
    assert commits_wait()
    with durable_atomic():
        assert commits_wait()


def test_a_worker_s_commits_do_not_wait_but_its_durable_ones_do(relaxed: None) -> None:
    assert not commits_wait()
    with durable_atomic():
        assert commits_wait()
    assert not commits_wait()


def test_a_durable_transaction_that_fails_leaves_the_connection_relaxed(relaxed: None) -> None:
    with pytest.raises(RuntimeError, match="claim"), durable_atomic():
        raise RuntimeError("the claim failed")
    assert not commits_wait()


def test_a_new_connection_of_a_worker_is_relaxed_too(relaxed: None) -> None:
    connections.close_all()
    assert not commits_wait()


def test_inside_another_transaction_sqlite_refuses_rather_than_pretend(relaxed: None) -> None:
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL's commit is chosen at its end: nesting works there")
    with transaction.atomic(), pytest.raises(RuntimeError, match="outermost"):
        with durable_atomic():
            pass


def test_operators_can_keep_a_worker_s_every_commit_durable(settings: Any) -> None:
    settings.WORKFLOWS_WORKER_DURABLE_COMMITS = True
    commits_relax()
    assert commits_wait()


@pytest.mark.qcluster
def test_a_qcluster_s_steps_commit_without_waiting_except_durable_ones() -> None:
    with QCluster(workers=1):
        run = workflow_start("test.commit_waits", {})
        wait_until(lambda: status_of(run) == RunStatus.COMPLETED)
    run.refresh_from_db()
    assert run.output == {"plain": False, "durable": True}
