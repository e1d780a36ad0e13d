"""A compiled read returns what the ORM's own `get` returns, field for field and type for
type, on each engine (their column converters differ: SQLite keeps UUIDs as text and
datetimes as strings), in one statement."""

import re
import uuid

import pytest
from django.db import connection
from django.db.models import Q
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from workflows.engine.compiled_reads import CompiledRead
from workflows.models import RunStatus, StepRecord, StepStatus, WorkflowRun

pytestmark = [pytest.mark.django_db, pytest.mark.db_engine]

run_by_id = CompiledRead(WorkflowRun, "pk")
step_by_run = CompiledRead(StepRecord, "run_id")


def field_values(instance):
    return {
        field.attname: (type(value), value)
        for field in type(instance)._meta.concrete_fields
        for value in [getattr(instance, field.attname)]
    }


@pytest.fixture
def run():
    return WorkflowRun.objects.create(
        workflow_id="compiled.read",
        input={"amount": "12.50", "items": [1, 2]},
        status=RunStatus.RUNNING,
        lease_owner="worker-1",
        lease_expires_at=timezone.now(),
        usage={"prompt_tokens": 3},
    )


def test_it_reads_the_row_the_orm_reads(run):
    step = StepRecord.objects.create(
        run=run,
        key="charge",
        position=0,
        kind="step",
        status=StepStatus.COMPLETED,
        output={"charge_id": "pi_1"},
        started_at=timezone.now(),
        finished_at=timezone.now(),
    )
    for compiled, orm in [
        (run_by_id.get(run.pk), WorkflowRun.objects.get(pk=run.pk)),
        (run_by_id.get(str(run.pk)), WorkflowRun.objects.get(pk=run.pk)),  # as tasks pass it
        (step_by_run.get(run.pk), StepRecord.objects.get(pk=step.pk)),
    ]:
        assert field_values(compiled) == field_values(orm)
        assert compiled == orm and not compiled._state.adding
        assert compiled._state.db == "default"


def test_it_costs_one_statement_and_says_what_is_missing(run):
    with CaptureQueriesContext(connection) as queries:
        run_by_id.get(run.pk)
    assert len(queries.captured_queries) == 1  # seen by DEBUG's query log, as any query

    missing = uuid.uuid4()
    with pytest.raises(WorkflowRun.DoesNotExist, match=re.escape(f"pk={missing!r}")):
        run_by_id.get(missing)


def test_refresh_reads_every_field_and_relation_again(run):
    stale = WorkflowRun.objects.prefetch_related("steps").get(pk=run.pk)
    assert list(stale.steps.all()) == []
    WorkflowRun.objects.filter(pk=run.pk).update(
        status=RunStatus.COMPLETED, output={"done": True}, lease_owner=""
    )
    StepRecord.objects.create(
        run=run, key="late", position=0, started_at=timezone.now(), finished_at=timezone.now()
    )

    run_by_id.refresh(stale)

    assert field_values(stale) == field_values(WorkflowRun.objects.get(pk=run.pk))
    assert stale.status == RunStatus.COMPLETED and stale.output == {"done": True}
    assert [step.key for step in stale.steps.all()] == ["late"]


def test_constant_conditions_and_an_order_are_kept(run):
    for position, status in [(2, StepStatus.COMPLETED), (0, StepStatus.FAILED), (1, "running")]:
        StepRecord.objects.create(
            run=run,
            key=f"step-{position}",
            position=position,
            kind="step",
            status=status,
            started_at=timezone.now(),
            finished_at=timezone.now(),
        )
    finished = CompiledRead(
        StepRecord,
        "run_id",
        where=Q(status__in=[StepStatus.COMPLETED, StepStatus.FAILED]),
        order_by=["-position"],
    )

    assert [step.key for step in finished.all(run.pk)] == ["step-2", "step-0"]
    assert finished.first(run.pk).key == "step-2"
    assert finished.first(uuid.uuid4()) is None and finished.all(uuid.uuid4()) == []


def test_exists_keeps_the_conditions_in_one_statement(run):
    running = CompiledRead(WorkflowRun, "pk", where=Q(status=RunStatus.RUNNING))
    with CaptureQueriesContext(connection) as queries:
        assert running.exists(run.pk) and running.exists(str(run.pk))
    assert len(queries.captured_queries) == 2
    assert not running.exists(uuid.uuid4())

    WorkflowRun.objects.filter(pk=run.pk).update(status=RunStatus.COMPLETED)
    assert not running.exists(run.pk)
    assert running.first(run.pk) is None  # the full read and `exists` compile apart
