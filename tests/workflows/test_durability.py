"""Which commits wait for the disk (`workflows.engine.durability`): a worker's do not,
except the ones in `durable_atomic` and the durable compiled writes; every other
process's always do."""

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.db.backends.signals import connection_created
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.support.cluster import QCluster, wait_until
from tests.support.runs import status_of
from tests.workflows.runtime_workflows import commits_wait
from workflows import workflow_start
from workflows.engine import durability
from workflows.engine.compiled_queries import CompiledUpdate
from workflows.engine.durability import commits_relax, durable_atomic
from workflows.models import RunStatus, WorkflowRun

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


# The mark of a charge's first attempt is one: a write that must be on disk before the
# effect leaves, alone in its transaction.
durable_touch = CompiledUpdate(WorkflowRun, ["pk"], durable=True)


@pytest.fixture
def run() -> WorkflowRun:
    return WorkflowRun.objects.create(workflow_id="test.durable_touch", input={})


def sqlite_synchronous_at_each_update() -> tuple[list[int], Any]:
    """What SQLite's `synchronous` was as each UPDATE of this connection ran."""
    seen: list[int] = []

    def look(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.startswith("UPDATE"):
            seen.append(context["cursor"].connection.execute("PRAGMA synchronous").fetchone()[0])
        return execute(sql, params, many, context)

    return seen, connection.execute_wrapper(look)


def wal_flushed_past(lsn: str) -> bool:
    """Whether PostgreSQL's write-ahead log is on disk beyond `lsn`."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_flush_lsn() > %s::pg_lsn", [lsn])
        return cursor.fetchone()[0]


def wal_written_so_far() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_insert_lsn()::text")
        return cursor.fetchone()[0]


def test_a_durable_update_alone_commits_to_disk_in_one_statement(
    relaxed: None, run: WorkflowRun
) -> None:
    if connection.vendor == "sqlite":
        seen, watching = sqlite_synchronous_at_each_update()
        with watching, CaptureQueriesContext(connection) as queries:
            assert durable_touch.update(run.pk, updated_at=timezone.now()) == 1
        assert seen == [2]  # FULL: this commit waits for the disk
    else:
        before = wal_written_so_far()
        with CaptureQueriesContext(connection) as queries:
            assert durable_touch.update(run.pk, updated_at=timezone.now()) == 1
        # Its commit record lies past `before`; a relaxed commit leaves it to the WAL
        # writer, up to 600 ms later.
        assert wal_flushed_past(before)
    # No BEGIN, SET LOCAL or COMMIT: each would be a round trip to PostgreSQL's server
    # (SQLite's PRAGMAs, in this process, are not).
    statements = [q["sql"].split()[0] for q in queries.captured_queries]
    assert [each for each in statements if each != "PRAGMA"] == ["UPDATE"]
    assert not commits_wait()  # and the connection's next commits are relaxed again


def test_a_durable_update_inside_a_transaction(relaxed: None, run: WorkflowRun) -> None:
    with transaction.atomic():
        if connection.vendor == "sqlite":
            # Its durability is chosen before the transaction begins: too late here.
            with pytest.raises(RuntimeError, match="outermost"):
                durable_touch.update(run.pk, updated_at=timezone.now())
            return
        assert not commits_wait()
        durable_touch.update(run.pk, updated_at=timezone.now())
        assert commits_wait()  # the enclosing transaction commits durably
    assert not commits_wait()


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
