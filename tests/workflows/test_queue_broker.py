"""The broker without Redis (`workflows.engine.queue.OrmBroker`): django-q2's ORM broker,
its acknowledgement one statement."""

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from workflows.engine import queue

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_engine]


def test_without_redis_the_queue_is_the_database_s_one_statement_broker():
    broker = queue._broker()
    assert isinstance(broker, queue.OrmBroker)
    broker.purge_queue()
    done, other = (str(uuid.uuid4()) for _ in range(2))
    queue._send(done)
    [(ack_id, _)] = broker.dequeue()  # a cluster took it
    queue._send(other)

    with CaptureQueriesContext(connection) as statements:
        broker.acknowledge(ack_id)  # its segment finished
    assert [query["sql"].split(" ")[0] for query in statements] == ["DELETE"]
    assert (broker.lock_size(), broker.queue_size()) == (0, 1)
    assert queue.runs_waiting([done, other]) == {other}
    broker.purge_queue()
