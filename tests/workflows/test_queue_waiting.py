"""`queue.runs_waiting` reads the waiting tasks of the broker in use (the ORM broker, or
Redis in the Redis pass): how the reaper tells a run whose task was lost from one
waiting its turn."""

import uuid

import pytest

from workflows.engine import queue

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.broker]


@pytest.fixture
def empty_queue():
    broker = queue._broker()
    broker.purge_queue()
    yield broker
    broker.purge_queue()


def test_only_the_runs_with_a_task_in_the_broker_are_waiting(empty_queue):
    queued, lost, other = (str(uuid.uuid4()) for _ in range(3))
    assert queue.runs_waiting([queued, lost]) == set()

    queue._send(queued)
    queue._send(other)
    assert queue.queue_depth() == 2
    assert queue.runs_waiting([queued, lost]) == {queued}


def test_a_task_a_cluster_took_is_no_longer_waiting(empty_queue):
    taken = str(uuid.uuid4())
    queue._send(taken)
    assert queue.runs_waiting([taken]) == {taken}
    assert empty_queue.dequeue()  # what a cluster's pusher does before it dies
    assert queue.runs_waiting([taken]) == set()
