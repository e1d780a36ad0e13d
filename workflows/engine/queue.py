"""Handing run segments to django-q2 workers."""

import functools
import logging
from uuid import UUID

from django.db import transaction
from django_q.brokers import Broker, get_broker
from django_q.conf import Conf
from django_q.tasks import async_task

logger = logging.getLogger(__name__)

EXECUTE_TASK = "workflows.tasks.run_execute_task"


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


def _send(run_id: str) -> None:
    async_task(EXECUTE_TASK, run_id, task_name=f"run {run_id}", broker=_broker())
    logger.debug("queued run %s", run_id)
