"""The broker without Redis (`workflows.engine.queue.OrmBroker`): django-q2's ORM broker,
its taking and its acknowledgement one statement each."""

import threading
import uuid

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.conf import Conf
from django_q.signing import SignedPackage

from workflows.engine import queue

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_engine]


@pytest.fixture
def broker():
    broker = queue._broker()
    assert isinstance(broker, queue.OrmBroker)
    broker.purge_queue()
    yield broker
    broker.purge_queue()


def run_of(package: str) -> str:
    return SignedPackage.loads(package)["args"][0]


def test_without_redis_the_queue_is_the_database_s_one_statement_broker(broker):
    done, other = (str(uuid.uuid4()) for _ in range(2))
    queue._send(done)
    [(ack_id, _)] = broker.dequeue()  # a cluster took it
    queue._send(other)

    with CaptureQueriesContext(connection) as statements:
        broker.acknowledge(ack_id)  # its segment finished
    assert [query["sql"].split(" ")[0] for query in statements] == ["DELETE"]
    assert (broker.lock_size(), broker.queue_size()) == (0, 1)
    assert queue.runs_waiting([done, other]) == {other}


def test_a_task_is_taken_once_oldest_first_in_one_statement(broker, settings):
    runs = [str(uuid.uuid4()) for _ in range(3)]
    for run_id in runs:
        queue._send(run_id)

    with CaptureQueriesContext(connection) as statements:
        [(_, first)] = broker.dequeue()
    assert [query["sql"].split(" ")[0] for query in statements] == ["UPDATE"]
    assert run_of(first) == runs[0]
    # Locked until django-q2's retry: no other cluster takes it meanwhile.
    assert (broker.lock_size(), broker.queue_size()) == (1, 2)
    [locked] = broker.get_connection().filter(lock__gt=timezone.now())
    assert run_of(locked.payload) == runs[0]
    assert locked.lock > timezone.now() + timezone.timedelta(seconds=Conf.RETRY - 60)

    assert [run_of(package) for _, package in broker.dequeue()] == [runs[1]]
    assert [run_of(package) for _, package in broker.dequeue()] == [runs[2]]
    assert broker.dequeue() == []  # empty: after a poll's pause, as django-q2's


def test_clusters_taking_at_once_never_take_the_same_task(broker):
    runs = {str(uuid.uuid4()) for _ in range(40)}
    for run_id in runs:
        queue._send(run_id)
    taken: list[str] = []
    start = threading.Barrier(4)

    def cluster() -> None:
        start.wait()
        try:
            while tasks := broker.dequeue():
                taken.extend(run_of(package) for _, package in tasks)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=cluster) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(taken) == sorted(runs)  # each once
