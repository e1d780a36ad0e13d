"""A run's status and lease change only through `workflows/engine/transitions.py`, and only
along `RUN_TRANSITIONS`."""

import ast
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from tests.support.source import source_parse
from workflows.engine import transitions
from workflows.engine.transitions import RUN_STATUS_MOVES, RUN_TRANSITIONS, Lease, Transition
from workflows.models import RunStatus, WorkflowRun

pytestmark = pytest.mark.db_engine

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("workflows", "orders")
OWNER = ROOT / "workflows" / "engine" / "transitions.py"
RUN_STATE_FIELDS = frozenset({"status", "lease_owner", "lease_expires_at"})
_WRITES = {"update", "create", "get_or_create", "update_or_create", "bulk_update", "bulk_create"}
# `UPDATE <the runs' table> SET`, however the table is named (literal, or the model's).
_SQL_UPDATE = re.compile(r"\bUPDATE\s+\S*workflowrun\S*\s+SET\b", re.IGNORECASE)


# --- (a) nobody else writes them ----------------------------------------------------------


class _RunStateWrites(ast.NodeVisitor):
    """Finds writes of a run's state fields: an ORM write through an expression that
    starts at `WorkflowRun` (directly, through a name bound to one, or an object's `.run`),
    an assignment to such an object's field, or SQL that UPDATEs the runs' table. Other
    models' `status` (waits, orders, emails) is not a run's and is not reported."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []
        self._runs: list[set[str]] = [set()]  # names bound to runs, per scope

    # which expressions are runs (or querysets of them)
    def _is_run(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id == "WorkflowRun" or node.id in self._runs[-1]
        if isinstance(node, ast.Attribute):
            return node.attr == "run" or self._is_run(node.value)
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):  # list(runs), type(run) ...
                return any(self._is_run(arg) for arg in node.args)
            return self._is_run(node.func)
        if isinstance(node, ast.Subscript | ast.Await | ast.Starred):
            return self._is_run(node.value)
        return False

    def _bind(self, target: ast.AST, is_run: bool) -> None:
        if isinstance(target, ast.Name) and is_run:
            self._runs[-1].add(target.id)
        elif isinstance(target, ast.Tuple | ast.List):
            for element in target.elts:
                self._bind(element, is_run)

    def _scoped(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        names = set(self._runs[-1])
        for arg in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
            if arg.annotation is not None and "WorkflowRun" in ast.unparse(arg.annotation):
                names.add(arg.arg)
        self._runs.append(names)
        self.generic_visit(node)
        self._runs.pop()

    visit_FunctionDef = _scoped
    visit_AsyncFunctionDef = _scoped

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._bind(target, self._is_run(node.value))
            self._check_target(target)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        annotated = "WorkflowRun" in ast.unparse(node.annotation)
        self._bind(node.target, annotated or (node.value is not None and self._is_run(node.value)))
        self._check_target(node.target)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_target(node.target)
        self.generic_visit(node)

    def visit_For(self, node: ast.For) -> None:
        self._bind(node.target, self._is_run(node.iter))
        self.generic_visit(node)

    def _check_target(self, target: ast.AST) -> None:
        if (
            isinstance(target, ast.Attribute)
            and target.attr in RUN_STATE_FIELDS
            and self._is_run(target.value)
        ):
            self.found.append((target.lineno, f"assigns a run's {target.attr}"))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in _WRITES and self._is_run(func.value):
            written = {k.arg for k in node.keywords if k.arg is not None}
            for keyword in node.keywords:
                if keyword.arg is None:
                    written.add("**")  # cannot tell: a splat may hold any field
                elif keyword.arg in {"defaults", "create_defaults"} and isinstance(
                    keyword.value, ast.Dict
                ):
                    written |= {k.value for k in keyword.value.keys if isinstance(k, ast.Constant)}
            if func.attr == "bulk_update":
                written |= {n.value for n in ast.walk(node) if isinstance(n, ast.Constant)}
            touched = written & (RUN_STATE_FIELDS | {"**"})
            if touched:
                self.found.append((node.lineno, f".{func.attr}() writes {sorted(touched)}"))
        if isinstance(func, ast.Name) and func.id == "setattr" and len(node.args) >= 2:
            field = node.args[1]
            if self._is_run(node.args[0]) and (
                not isinstance(field, ast.Constant) or field.value in RUN_STATE_FIELDS
            ):
                self.found.append((node.lineno, "setattr on a run"))
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        self._check_sql(node, ast.unparse(node))

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            self._check_sql(node, node.value)

    def _check_sql(self, node: ast.expr, text: str) -> None:
        if _SQL_UPDATE.search(text):
            self.found.append((node.lineno, "SQL that UPDATEs the runs"))


def run_state_writes(source: str) -> list[tuple[int, str]]:
    finder = _RunStateWrites()
    finder.visit(source_parse(source))
    return finder.found


def scanned_modules() -> Iterator[Path]:
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts and path != OWNER:
                yield path


def test_only_transitions_writes_a_runs_status_or_lease():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in scanned_modules()
        for line, what in run_state_writes(path.read_text())
    ]
    assert offenders == [], "write these through workflows/engine/transitions.py:\n" + "\n".join(
        offenders
    )


def test_the_scan_sees_the_runs_writes_it_replaced():
    # Each as it was written before transitions.py (leases, executor, context, services).
    before = [
        """
def lease_take(run_id, token):
    if WorkflowRun.objects.filter(pk=run_id).filter(takeable).update(
        status=RunStatus.RUNNING, lease_owner=token, lease_expires_at=now
    ):
        return True
""",
        """
def lease_renew(tokens):
    return WorkflowRun.objects.filter(lease_owner__in=tokens).update(lease_expires_at=now)
""",
        """
class WorkflowContext:
    def _suspend(self):
        with transaction.atomic():
            WorkflowRun.objects.filter(pk=self.run_id).update(
                status=RunStatus.SUSPENDED, lease_owner="", lease_expires_at=None
            )
""",
        """
def runs_reap(now):
    for run_id in candidates:
        revived = WorkflowRun.objects.filter(dead, pk=run_id).update(
            status=RunStatus.PENDING, lease_owner="", lease_expires_at=None, updated_at=now
        )
""",
        # and the ways it could come back
        """
def run_mark(run_id):
    runs = WorkflowRun.objects.filter(pk=run_id)
    runs.update(status="failed")
""",
        """
def run_mark(run: WorkflowRun):
    run.status = RunStatus.FAILED
    run.save()
""",
        """
def order_mark(order):
    order.run.lease_owner = ""
""",
        """
def run_mark(run_id, fields):
    WorkflowRun.objects.filter(pk=run_id).update(**fields)
""",
        """
def run_mark(run_id):
    cursor.execute(f"UPDATE {WorkflowRun._meta.db_table} SET status = 'failed'")
""",
        """
def run_mark(run_id):
    cursor.execute('UPDATE "workflows_workflowrun" SET "lease_owner" = %s', [""])
""",
    ]
    assert [bool(run_state_writes(source)) for source in before] == [True] * len(before)


def test_the_scan_leaves_other_models_status_alone():
    others = """
def wait_cancel(run):
    Wait.objects.filter(run=run, status=WaitStatus.WAITING).update(status=WaitStatus.CANCELLED)
    Order.objects.filter(run_id=run.pk).update(status=OrderStatus.FAILED)
    record.status = EmailStatus.SENT
    record.save(update_fields=["status", "sent_at"])
    counts.update(WorkflowRun.objects.values_list("status"))
    WorkflowRun.objects.filter(status=RunStatus.PENDING).update(updated_at=now)
    run = WorkflowRun.objects.create(workflow_id=workflow_id, input=payload)
    runs = runs_list(status=status)
    cursor.execute(f"INSERT INTO steps SELECT 1 FROM {WorkflowRun._meta.db_table}")
    "Prose may say that transitions UPDATE WorkflowRun rows, as a docstring does."
"""
    assert run_state_writes(others) == []


# --- (b) the table is what the UPDATEs allow -----------------------------------------------

TOKEN = "held-by-test"


def _transition_calls() -> dict[Transition, Callable[..., bool]]:
    now = timezone.now()
    until = now + timedelta(minutes=1)
    return {
        Transition.TAKE: lambda run_id, token: transitions.take(
            run=WorkflowRun.objects.get(pk=run_id), token=token, until=until, now=now
        ),
        Transition.TAKE_OVER: lambda run_id, token: transitions.take_over(
            run=WorkflowRun.objects.get(pk=run_id), token=token, until=until, now=now
        ),
        Transition.SUSPEND: lambda run_id, token: transitions.suspend(
            run_id=run_id, token=token, usage={}, now=now
        ),
        Transition.COMPLETE: lambda run_id, token: transitions.complete(
            run_id=run_id, token=token, output=None, usage={}, now=now
        ),
        Transition.FAIL: lambda run_id, token: transitions.fail(
            run_id=run_id, token=token, error="E", error_traceback="T", usage={}, now=now
        ),
        Transition.RELEASE: lambda run_id, token: transitions.release(
            run_id=run_id, token=token, now=now
        ),
        Transition.REAP: lambda run_id, token: transitions.reap(run_id=run_id, now=now),
        Transition.RESUME: lambda run_id, token: transitions.resume(run_id=run_id, now=now),
        Transition.RETRY: lambda run_id, token: transitions.retry(run_id=run_id, now=now),
        Transition.CANCEL: lambda run_id, token: transitions.cancel(run_id=run_id, now=now),
    }


def _run_in(status: RunStatus, *, lease_seconds: int = -60) -> WorkflowRun:
    """A run in `status` whose lease is held by TOKEN and (by default) expired, so that
    only the status decides whether a transition may move it."""
    return WorkflowRun.objects.create(
        workflow_id="test.transitions",
        input={},
        status=status,
        lease_owner=TOKEN,
        lease_expires_at=timezone.now() + timedelta(seconds=lease_seconds),
    )


@pytest.mark.django_db
def test_each_transition_moves_only_from_its_statuses():
    calls = _transition_calls()
    assert set(calls) == set(RUN_TRANSITIONS)  # a new transition needs its row here
    moves = set()
    for name, transition in RUN_TRANSITIONS.items():
        for source in RunStatus:
            run = _run_in(source)
            moved = calls[name](run.id, TOKEN)
            after = WorkflowRun.objects.get(pk=run.id)
            if moved:
                moves.add((source, RunStatus(after.status)))
            assert moved == (source in transition.sources), (name, source)
            assert after.status == (transition.target if moved else source), (name, source)
            if moved and after.status != RunStatus.RUNNING:
                assert (after.lease_owner, after.lease_expires_at) == ("", None), name
    allowed = {(source, to) for source, targets in RUN_STATUS_MOVES.items() for to in targets}
    # Every status was tried by every transition: a (from, to) pair outside the table
    # never happened, and every pair in it did.
    assert moves == allowed


@pytest.mark.django_db
def test_a_transition_that_needs_the_lease_is_refused_without_it():
    calls = _transition_calls()
    for name, transition in RUN_TRANSITIONS.items():
        source = transition.sources[0]
        if transition.lease is Lease.HELD:
            run = _run_in(source)
            assert calls[name](run.id, "another-worker") is False, name
        elif transition.lease is Lease.EXPIRED:
            run = _run_in(source, lease_seconds=60)  # its worker is alive
            assert calls[name](run.id, TOKEN) is False, name
        else:
            continue
        assert WorkflowRun.objects.get(pk=run.id).status == source, name


@pytest.mark.django_db
@pytest.mark.db_engine
@pytest.mark.parametrize("source", [RunStatus.PENDING, RunStatus.RUNNING])
def test_a_take_from_a_stale_read_moves_nothing(source):
    """Two workers read the same run; the one that takes it second read it before the
    first take and loses, even after the run came back to where it read it."""
    now = timezone.now()
    run = _run_in(source)  # its lease, if running, expired
    take = transitions.take if source == RunStatus.PENDING else transitions.take_over
    stale = WorkflowRun.objects.get(pk=run.pk)

    expired = now - timedelta(minutes=1)
    assert take(run=WorkflowRun.objects.get(pk=run.pk), token="first", until=expired, now=now)
    # Back where the stale read saw it (handed back, or its lease expired again).
    WorkflowRun.objects.filter(pk=run.pk).update(status=source, lease_owner=TOKEN)
    assert not take(run=stale, token="second", until=expired, now=now)

    taken = WorkflowRun.objects.get(pk=run.pk)
    assert taken.attempts == stale.attempts + 1 and taken.lease_owner == TOKEN
    fresh = take(run=taken, token="second", until=now + timedelta(minutes=1), now=now)
    assert fresh and WorkflowRun.objects.get(pk=run.pk).started_at == taken.started_at


@pytest.mark.django_db
@pytest.mark.parametrize("source", [RunStatus.PENDING, RunStatus.RUNNING])
def test_a_take_leaves_the_run_as_its_row_now_is(source):
    """The taker goes on with the run it read, not a second read: every field of it must
    be what the database now holds."""
    run = _run_in(source)  # its lease, if running, expired
    take = transitions.take if source == RunStatus.PENDING else transitions.take_over
    now = timezone.now()
    assert take(run=run, token="taker", until=now + timedelta(minutes=1), now=now)

    def fields(of: WorkflowRun) -> dict[str, object]:
        return {field.attname: getattr(of, field.attname) for field in of._meta.concrete_fields}

    assert fields(run) == fields(WorkflowRun.objects.get(pk=run.pk))
    assert (run.status, run.lease_owner) == (RunStatus.RUNNING, "taker")
