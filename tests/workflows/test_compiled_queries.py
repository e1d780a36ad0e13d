"""A compiled read returns what the ORM's own `get` returns, a compiled update writes what
its `update` writes and a compiled insert what `save` inserts, field for field and type
for type, on each engine (their column converters differ: SQLite keeps UUIDs as text and
datetimes as strings), in one statement."""

import re
import uuid

import pytest
from django.db import IntegrityError, connection
from django.db.models import Exists, F, OuterRef, Q
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from workflows.engine.compiled_queries import (
    CompiledInsert,
    CompiledRead,
    CompiledUpdate,
    RowExists,
)
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


def step_of(run, key, *, position=0, status=StepStatus.COMPLETED, **fields):
    return StepRecord.objects.create(
        run=run,
        key=key,
        position=position,
        kind="step",
        status=status,
        started_at=timezone.now(),
        finished_at=timezone.now(),
        **fields,
    )


def test_it_reads_the_row_the_orm_reads(run):
    step = step_of(run, "charge", output={"charge_id": "pi_1"})
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
        step_of(run, f"step-{position}", position=position, status=status)
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


def test_annotations_are_set_as_annotate_sets_them(run):
    """An annotation with parameters of its own (they come before the value's)."""
    for key, status in [("charge", StepStatus.COMPLETED), ("email", StepStatus.FAILED)]:
        step_of(run, key, status=status)
    with_steps = CompiledRead(
        WorkflowRun,
        "pk",
        annotations={
            "charged": Exists(StepRecord.objects.filter(run=OuterRef("pk"), key="charge")),
            "emailed": Exists(
                StepRecord.objects.filter(
                    run=OuterRef("pk"), key="email", status=StepStatus.COMPLETED
                )
            ),
        },
    )
    orm = WorkflowRun.objects.annotate(**with_steps.annotations).get(pk=run.pk)

    with CaptureQueriesContext(connection) as queries:
        compiled = with_steps.get(run.pk)
    assert len(queries.captured_queries) == 1
    assert field_values(compiled) == field_values(orm)
    assert (compiled.charged, compiled.emailed) == (orm.charged, orm.emailed) == (True, False)
    assert with_steps.exists(run.pk) and with_steps.first(uuid.uuid4()) is None


def test_an_update_writes_what_the_orm_writes(run):
    twin = WorkflowRun.objects.get(pk=run.pk)
    twin.pk = None
    twin.save(force_insert=True)
    values = {
        "status": RunStatus.COMPLETED,
        "output": {"charge_id": "pi_1", "amount": "12.50"},
        "lease_owner": "",
        "lease_expires_at": None,
        "updated_at": timezone.now(),
    }
    complete = CompiledUpdate(WorkflowRun, ["pk", "lease_owner"], where=Q(status=RunStatus.RUNNING))

    with CaptureQueriesContext(connection) as queries:
        assert complete.update(run.pk, "worker-1", **values) == 1
    assert len(queries.captured_queries) == 1
    assert WorkflowRun.objects.filter(pk=twin.pk).update(**values) == 1
    written, expected = (field_values(WorkflowRun.objects.get(pk=pk)) for pk in (run.pk, twin.pk))
    del written["id"], expected["id"], written["created_at"], expected["created_at"]
    assert written == expected


def test_an_update_writes_only_where_its_keys_and_conditions_hold(run):
    complete = CompiledUpdate(WorkflowRun, ["pk", "lease_owner"], where=Q(status=RunStatus.RUNNING))
    assert complete.update(run.pk, "worker-2", status=RunStatus.COMPLETED) == 0  # not its lease
    assert complete.update(uuid.uuid4(), "worker-1", status=RunStatus.COMPLETED) == 0
    assert WorkflowRun.objects.get(pk=run.pk).status == RunStatus.RUNNING

    assert complete.update(str(run.pk), "worker-1", status=RunStatus.COMPLETED) == 1
    assert complete.update(run.pk, "worker-1", status=RunStatus.FAILED) == 0  # no longer running
    assert WorkflowRun.objects.get(pk=run.pk).status == RunStatus.COMPLETED


def test_an_update_leaves_expressions_to_the_orm_and_refuses_what_it_cannot_compile(run):
    by_id = CompiledUpdate(WorkflowRun, ["pk"], where=Q(status=RunStatus.RUNNING))
    assert by_id.update(run.pk, attempts=F("attempts") + 1, lease_owner="worker-2") == 1
    assert by_id.update(uuid.uuid4(), attempts=F("attempts") + 1) == 0
    assert WorkflowRun.objects.get(pk=run.pk).attempts == run.attempts + 1

    with pytest.raises(TypeError, match="expected 1 key values"):
        by_id.update(run.pk, "worker-1", status=RunStatus.COMPLETED)
    across = CompiledUpdate(StepRecord, ["pk"], where=Q(run__status=RunStatus.RUNNING))
    with pytest.raises(ValueError, match="one table only"):
        across.update(1, key="late")


def test_an_update_by_a_foreign_key_and_an_exclusion(run):
    now = timezone.now()
    step = StepRecord.objects.create(
        run=run, key="charge", position=0, status="running", started_at=now, finished_at=now
    )
    unfinished = CompiledUpdate(StepRecord, ["run_id"], where=~Q(status=StepStatus.COMPLETED))
    assert unfinished.update(run.pk, status=StepStatus.FAILED, error="gone") == 1
    assert unfinished.update(run.pk, status=StepStatus.COMPLETED) == 1
    assert unfinished.update(run.pk, status=StepStatus.FAILED) == 0
    assert StepRecord.objects.get(pk=step.pk).error == "gone"


NOW = timezone.now()


def new_step(run, key):
    return StepRecord(
        run=run,
        key=key,
        position=1,
        kind="llm",
        status=StepStatus.COMPLETED,
        output={"text": "ok", "amount": "12.50"},
        meta={"usage": {"prompt_tokens": 3}},
        started_at=NOW,
        finished_at=NOW,
    )


def test_an_insert_writes_what_save_writes_in_one_statement(run):
    step, twin = new_step(run, "llm/1"), new_step(run, "llm/2")
    with CaptureQueriesContext(connection) as queries:
        assert CompiledInsert(StepRecord).insert(step) is True
    assert len(queries.captured_queries) == 1
    twin.save()
    assert step.pk is not None and not step._state.adding
    written, expected = (field_values(StepRecord.objects.get(pk=pk)) for pk in (step.pk, twin.pk))
    del written["id"], expected["id"], written["key"], expected["key"]
    assert written == expected
    with pytest.raises(IntegrityError):  # the run's keys are unique, as for `save`
        CompiledInsert(StepRecord).insert(new_step(run, "llm/1"))


def test_an_insert_only_if_goes_in_only_while_that_row_holds(run):
    while_running = CompiledInsert(
        StepRecord, only_if=RowExists(WorkflowRun, ["pk"], Q(status=RunStatus.RUNNING))
    )
    with CaptureQueriesContext(connection) as queries:
        assert while_running.insert(new_step(run, "first"), run.pk) is True
    assert len(queries.captured_queries) == 1
    WorkflowRun.objects.filter(pk=run.pk).update(status=RunStatus.COMPLETED)
    late = new_step(run, "late")
    assert while_running.insert(late, run.pk) is False
    assert while_running.insert(new_step(run, "lost"), uuid.uuid4()) is False
    assert late.pk is None and late._state.adding
    assert list(StepRecord.objects.filter(run=run).values_list("key", flat=True)) == ["first"]
    with pytest.raises(TypeError, match="expected 1 key values"):
        while_running.insert(new_step(run, "again"))
