"""Handing run segments to django-q2 workers."""

import functools
import logging
from collections.abc import Callable, Collection
from time import sleep
from typing import Any
from uuid import UUID

from django.db import connections, transaction
from django.utils import timezone
from django_q.brokers import Broker, get_broker
from django_q.brokers.orm import ORM
from django_q.brokers.redis_broker import Redis
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import SignedPackage
from django_q.tasks import async_task

logger = logging.getLogger(__name__)

EXECUTE_TASK = "workflows.tasks.run_execute_task"


class OrmBroker(ORM):
    """django-q2's ORM broker (`Q_CLUSTER["broker_class"]` without Redis), its taking and
    its acknowledgement one statement each.

    django-q2 takes a task with a SELECT and then an UPDATE of its `lock` (if no other
    cluster changed it in between), and acknowledges it with `QuerySet.delete()`, which
    wraps even a one-row delete in BEGIN and COMMIT: five round trips to PostgreSQL's
    server for every segment. Here a task is taken by one UPDATE that picks, locks and
    returns it (on PostgreSQL skipping rows another cluster is taking; SQLite has one
    writer), and acknowledged by a bare DELETE (a queue row has no relations and no
    delete signals). Other databases get django-q2's own."""

    def _connection(self) -> tuple[Any, Callable[[str], str]]:
        queue = self.get_connection()  # as django-q2's: closes a stale connection first
        connection = connections[queue.db]
        return connection, connection.ops.quote_name

    def dequeue(self) -> list[tuple[int, str]] | None:
        connection, quote = self._connection()
        if connection.vendor not in ("postgresql", "sqlite"):
            return super().dequeue()  # type: ignore[no-any-return]
        table, pk, key, lock, payload = map(
            quote, [OrmQ._meta.db_table, "id", "key", "lock", "payload"]
        )
        skip_locked = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
        lock_field = OrmQ._meta.get_field("lock")
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET {lock} = %s WHERE {pk} IN ("
                f"SELECT {pk} FROM {table} WHERE {key} = %s AND {lock} < %s"
                f" ORDER BY {pk} LIMIT %s{skip_locked}) RETURNING {pk}, {payload}",
                [
                    lock_field.get_db_prep_value(self.timeout(None), connection),
                    self.list_key,
                    lock_field.get_db_prep_value(timezone.now(), connection),
                    Conf.BULK,
                ],
            )
            tasks: list[tuple[int, str]] = cursor.fetchall()
        if not tasks:
            sleep(Conf.POLL)  # an empty queue, as django-q2's
        return tasks

    def delete(self, task_id: int) -> None:
        connection, quote = self._connection()
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {quote(OrmQ._meta.db_table)} WHERE {quote('id')} = %s", [task_id]
            )


@functools.cache
def _broker() -> Broker:
    # One broker per process: with Redis, a new broker per call is a new TCP connection.
    return get_broker()


def run_enqueue(run_id: UUID | str) -> None:
    """Queue one execution segment of a run.

    With the ORM broker on the default database, the queue row is written inside the
    caller's transaction: the run's state change and its task commit together. With
    any other broker (or synchronous mode) the task is sent after commit; if the
    process dies in between, the reaper re-queues the run.
    """
    same_database = Conf.ORM == "default" and not Conf.SYNC
    if same_database:
        _send(str(run_id))
    else:
        transaction.on_commit(functools.partial(_send, str(run_id)))


def queue_depth() -> int:
    """Tasks waiting to be handed to a worker (not counting those a cluster holds)."""
    size: int = _broker().queue_size()
    return size


# Above this many waiting tasks, `runs_waiting` does not read them one by one (a backlog):
# every run counts as waiting its turn. Reading one costs ~45 µs (signature, unpickling),
# so a full read is ~0.1 s, at most every WORKFLOWS_REAP_SECONDS per worker process.
WAITING_SCAN_LIMIT = 2000


def runs_waiting(run_ids: Collection[UUID | str]) -> set[str]:
    """Which of `run_ids` have a task waiting in the broker, not yet handed to a cluster.

    A run that is pending without one lost its task: a SIGKILLed cluster held it (the ORM
    broker hands it out again only after its `retry`, minutes; Redis never), or it was
    acknowledged before the segment took the lease. The ORM and Redis brokers are read
    task by task (up to WAITING_SCAN_LIMIT); any other broker only says whether it holds
    anything at all.
    """
    wanted = {str(run_id) for run_id in run_ids}
    if not wanted:
        return set()
    broker = _broker()
    size = queue_depth()
    if size == 0:
        return set()
    if size > WAITING_SCAN_LIMIT or not isinstance(broker, ORM | Redis):
        return wanted
    if isinstance(broker, ORM):
        packages = list(
            broker.get_connection()
            .filter(key=broker.list_key, lock__lte=timezone.now())
            .values_list("payload", flat=True)[:WAITING_SCAN_LIMIT]
        )
    else:
        packages = broker.connection.lrange(broker.list_key, 0, WAITING_SCAN_LIMIT - 1)
    waiting = set()
    for package in packages:
        try:
            task = SignedPackage.loads(package)
        except Exception:  # not ours to judge: the pusher fails it
            continue
        if task.get("func") == EXECUTE_TASK and task.get("args"):
            waiting.add(str(task["args"][0]))
    return waiting & wanted


def _send(run_id: str) -> None:
    async_task(EXECUTE_TASK, run_id, task_name=f"run {run_id}", broker=_broker())
    logger.debug("queued run %s", run_id)
