"""Riding out a dependency's outage: the backoff, which failures are transient, the durable
wait of a step for its dependency, the retry horizon, and the circuit per dependency.

Runs execute inline (`queue_capture`); time moves by passing `now` to the wake-up and by
moving recorded timestamps back, never by sleeping.
"""

from datetime import UTC, timedelta
from pathlib import Path

import pytest
import stripe
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.workflows.sample_workflows import DEPENDENCIES_DOWN, journal_lines
from workflows import NonRetryableError, RetryPolicy, TransientError, run_retry, workflow_start
from workflows.console.presenters import waiting_for_text
from workflows.engine import circuits
from workflows.engine.circuits import Admission, circuit_admit, circuit_failed, circuit_succeeded
from workflows.engine.retry import failure_is_transient
from workflows.engine.selectors import run_waiting_for
from workflows.engine.services import retry_waits_wake
from workflows.models import (
    RETRY_WAIT,
    Circuit,
    CircuitState,
    RunStatus,
    StepRecord,
    Wait,
    WaitStatus,
    WorkflowRun,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_engine]


@pytest.fixture(autouse=True)
def dependencies_up():
    DEPENDENCIES_DOWN.clear()
    yield
    DEPENDENCIES_DOWN.clear()


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "journal"


def later(seconds: float):
    return timezone.now() + timedelta(seconds=seconds)


def status_of(run: WorkflowRun) -> str:
    run.refresh_from_db()
    return run.status


# --- the backoff --------------------------------------------------------------------------


def test_backoff_grows_exponentially_up_to_its_cap_with_jitter():
    policy = RetryPolicy(initial_interval=1.0, backoff=2.0, max_interval=30.0, jitter=0.2)
    for attempt, base in [(1, 1), (2, 2), (3, 4), (5, 16), (6, 30), (12, 30), (60, 30)]:
        delays = [policy.delay(attempt) for _ in range(300)]
        assert base * 0.8 <= min(delays) and max(delays) <= base * 1.2, (attempt, base)
        assert max(delays) - min(delays) > base * 0.2  # spread, not lockstep


def test_a_retry_after_is_believed_within_the_cap():
    policy = RetryPolicy(max_interval=30.0, jitter=0.2)
    assert 7 <= policy.delay(1, TransientError("busy", retry_after=7)) <= 7 * 1.2
    assert 30 <= policy.delay(1, TransientError("busy", retry_after=600)) <= 30 * 1.2


# --- transient or permanent ---------------------------------------------------------------


class _Status(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionRefusedError(111, "Connection refused"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (TimeoutError("timed out"), True),
        (TimeoutError("timed out"), True),
        (TransientError("overloaded"), True),
        (_Status(500), True),
        (_Status(503), True),
        (_Status(429), True),
        (stripe.APIError("boom", http_status=502), True),
        (_Status(400), False),
        (_Status(404), False),
        (stripe.InvalidRequestError("bad amount", param="amount", http_status=400), False),
        (NonRetryableError("card declined"), False),
        (ValueError("a bug"), False),
    ],
)
def test_which_failures_of_the_outside_world_are_transient(exc, transient):
    assert failure_is_transient(exc) is transient


def test_a_policy_retries_transient_failures_over_the_horizon_only_for_a_dependency():
    refused = ConnectionRefusedError(111, "Connection refused")
    assert not RetryPolicy().transient(refused)  # no dependency: bounded retries
    assert RetryPolicy(dependency="stripe").transient(refused)
    assert not RetryPolicy(dependency="stripe", retry_on=(TransientError,)).transient(refused)
    assert not RetryPolicy(
        dependency="stripe", non_retryable=(ConnectionRefusedError,)
    ).transient(refused)
    assert RetryPolicy(dependency="{provider}").named(provider="openai").dependency == "openai"


def test_the_horizon_comes_from_the_policy_the_dependency_or_the_default(settings):
    settings.WORKFLOWS_TRANSIENT_RETRY_HORIZON = 3600
    settings.WORKFLOWS_TRANSIENT_RETRY_HORIZONS = {"smtp": 600}
    assert RetryPolicy(dependency="stripe").retry_horizon() == 3600
    assert RetryPolicy(dependency="smtp").retry_horizon() == 600
    assert RetryPolicy(dependency="smtp", horizon=20).retry_horizon() == 20


# --- the circuit ----------------------------------------------------------------------------


def test_the_circuit_opens_after_consecutive_failures_across_runs(settings):
    settings.WORKFLOWS_CIRCUIT_FAILURES = 3
    assert circuit_admit("stripe", holder="run-a") is Admission.GO
    circuit_failed("stripe", holder="run-a", error="refused")
    circuit_failed("stripe", holder="run-b", error="refused")
    circuit_succeeded("stripe")  # a success in between: the count starts again
    assert Circuit.objects.get(dependency="stripe").consecutive_failures == 0
    assert not circuit_failed("stripe", holder="run-a", error="refused")
    assert not circuit_failed("stripe", holder="run-b", error="refused")
    assert circuit_failed("stripe", holder="run-c", error="ConnectionRefusedError: refused")

    circuit = Circuit.objects.get(dependency="stripe")
    assert circuit.state == CircuitState.OPEN and circuit.consecutive_failures == 3
    assert "refused" in circuit.last_error
    assert circuit_admit("stripe", holder="run-d") is Admission.WAIT
    assert circuit_admit("smtp", holder="run-d") is Admission.GO  # one circuit each


def test_one_probe_at_a_time_decides_and_a_failed_probe_waits_longer(settings):
    settings.WORKFLOWS_CIRCUIT_FAILURES = 1
    settings.WORKFLOWS_CIRCUIT_PROBE_SECONDS = 5
    circuit_failed("stripe", holder="run-a", error="refused")
    soon = later(1.5)
    assert circuit_admit("stripe", holder="run-b", now=soon) is Admission.PROBE
    assert circuit_admit("stripe", holder="run-c", now=soon) is Admission.WAIT
    assert circuit_admit("stripe", holder="run-b", now=soon) is Admission.PROBE  # still its

    circuit_failed("stripe", holder="run-b", error="refused", now=soon)
    circuit = Circuit.objects.get(dependency="stripe")
    assert circuit.state == CircuitState.OPEN and circuit.probe_interval == 2
    assert circuit_admit("stripe", holder="run-c", now=soon + timedelta(seconds=1)) is (
        Admission.WAIT
    )
    # The pause doubles, up to WORKFLOWS_CIRCUIT_PROBE_SECONDS.
    moment = soon
    for expected in (4, 5, 5):
        moment += timedelta(seconds=6)
        assert circuit_admit("stripe", holder="run-c", now=moment) is Admission.PROBE
        circuit_failed("stripe", holder="run-c", error="refused", now=moment)
        assert Circuit.objects.get(dependency="stripe").probe_interval == expected

    moment += timedelta(seconds=6)
    assert circuit_admit("stripe", holder="run-d", now=moment) is Admission.PROBE
    assert circuit_succeeded("stripe") is True
    circuit = Circuit.objects.get(dependency="stripe")
    assert (circuit.state, circuit.consecutive_failures) == (CircuitState.CLOSED, 0)
    assert circuit_admit("stripe", holder="run-e") is Admission.GO


def test_a_success_on_a_healthy_circuit_makes_no_statement(settings):
    settings.WORKFLOWS_CIRCUIT_FAILURES = 3
    circuit_failed("stripe", holder="run-a", error="refused")
    circuit_succeeded("stripe")  # this process counted that failure: it resets it
    assert Circuit.objects.get(dependency="stripe").consecutive_failures == 0
    circuit_admit("stripe", holder="run-a")  # a fresh view: clean

    with CaptureQueriesContext(connection) as statements:
        assert circuit_succeeded("stripe") is False
    assert [query["sql"] for query in statements.captured_queries] == []


def test_a_failure_counted_by_another_process_is_reset_by_a_later_success(settings):
    settings.WORKFLOWS_CIRCUIT_FAILURES = 3
    circuit_admit("stripe", holder="run-a")  # this process's view: clean
    # Another process counts two failures (this one has not seen them yet).
    Circuit.objects.create(dependency="stripe", consecutive_failures=2)
    circuits._snapshot.read_at -= circuits.SNAPSHOT_SECONDS  # its view is due again

    with CaptureQueriesContext(connection) as statements:
        assert circuit_succeeded("stripe") is False
    assert Circuit.objects.get(dependency="stripe").consecutive_failures == 0
    assert any("UPDATE" in query["sql"] for query in statements.captured_queries)
    assert not circuit_failed("stripe", holder="run-b", error="refused")  # 1, not 3


def test_a_probe_whose_holder_died_is_taken_by_another(settings):
    settings.WORKFLOWS_CIRCUIT_FAILURES = 1
    settings.WORKFLOWS_LEASE_SECONDS = 10
    circuit_failed("stripe", holder="run-a", error="refused")
    assert circuit_admit("stripe", holder="run-b", now=later(2)) is Admission.PROBE
    assert circuit_admit("stripe", holder="run-c", now=later(5)) is Admission.WAIT
    assert circuit_admit("stripe", holder="run-c", now=later(13)) is Admission.PROBE


# --- a step waiting for its dependency ------------------------------------------------------


def test_a_step_waits_durably_for_its_dependency_and_goes_on_counting(
    queue_capture, journal, settings
):
    settings.WORKFLOWS_CIRCUIT_FAILURES = 0  # no circuit: the step's own backoff alone
    DEPENDENCIES_DOWN["inventory"] = True
    run = workflow_start("test.dependent", {"journal": str(journal)})
    assert queue_capture.drain() == ["suspended"]  # two attempts in the worker, then parked

    run.refresh_from_db()
    assert run.status == RunStatus.SUSPENDED and run.lease_owner == ""
    wait = Wait.objects.get(run=run, key="call")
    assert wait.kind == RETRY_WAIT and wait.status == WaitStatus.WAITING
    assert wait.data["dependency"] == "inventory" and wait.data["attempts"] == 2
    assert "ConnectionRefusedError" in wait.data["error"]
    assert not StepRecord.objects.filter(run=run, key="call").exists()
    waiting = run_waiting_for(run)
    assert waiting is not None and (waiting.attempt, waiting.next_at) == (3, wait.deadline)
    text = waiting_for_text(waiting)
    assert text.startswith("waiting for inventory (attempt 3, next at ")
    assert text.endswith(f"{wait.deadline.astimezone(UTC):%H:%M:%S} UTC)")

    assert retry_waits_wake(now=wait.deadline - timedelta(seconds=1)) == 0  # not yet
    assert queue_capture.sent == []
    assert retry_waits_wake(now=later(120)) == 1
    assert queue_capture.drain() == ["suspended"]  # one attempt per wake-up now
    assert Wait.objects.get(run=run, key="call").data["attempts"] == 3

    DEPENDENCIES_DOWN["inventory"] = False
    retry_waits_wake(now=later(120))
    assert queue_capture.drain() == ["completed"]
    assert journal_lines(journal) == ["call"] * 4 + ["after"]
    assert StepRecord.objects.get(run=run, key="call").attempt == 4
    assert run_waiting_for(run) is None


@pytest.mark.parametrize("failure", ["declined", "http400"])
def test_a_permanent_failure_fails_the_step_at_once(queue_capture, journal, failure):
    DEPENDENCIES_DOWN["inventory"] = True
    run = workflow_start("test.dependent", {"journal": str(journal), "failure": failure})
    assert queue_capture.drain() == ["failed"]
    assert journal_lines(journal) == ["call"]
    assert not Wait.objects.filter(run=run).exists()
    assert not Circuit.objects.filter(consecutive_failures__gt=0).exists()


def test_past_the_horizon_the_run_fails_naming_the_dependency(
    queue_capture, journal, settings, hooks_registry
):
    """The step's first failure is moved back past the horizon, as if the outage had gone
    on that long: its next attempt fails, and the run with it."""
    settings.WORKFLOWS_CIRCUIT_FAILURES = 0
    hooks_registry.register_dependency_name("inventory", "the inventory service")
    DEPENDENCIES_DOWN["inventory"] = True
    run = workflow_start(
        "test.dependent", {"journal": str(journal), "failure": "http503", "horizon": 60}
    )
    assert queue_capture.drain() == ["suspended"]
    wait = Wait.objects.get(run=run, key="call")
    first = timezone.now() - timedelta(seconds=61)
    Wait.objects.filter(pk=wait.pk).update(data={**wait.data, "first_failed_at": first.isoformat()})

    retry_waits_wake(now=later(120))
    assert queue_capture.drain() == ["failed"]
    run.refresh_from_db()
    assert "the inventory service (inventory) stayed unavailable for 1 min" in run.error
    assert "3 attempt(s)" in run.error and "HTTP 503" in run.error
    step = StepRecord.objects.get(run=run, key="call")
    assert step.status == "failed" and step.attempt == 3

    # `run_retry` starts a new horizon: the step is attempted, and waits again.
    run_retry(run.id)
    assert queue_capture.drain() == ["suspended"]
    assert Wait.objects.get(run=run, key="call").data["attempts"] == 2
    DEPENDENCIES_DOWN["inventory"] = False
    retry_waits_wake(now=later(120))
    assert queue_capture.drain() == ["completed"]


def test_an_open_circuit_parks_steps_without_calling_and_its_closing_wakes_them(
    queue_capture, tmp_path, settings, monkeypatch
):
    settings.WORKFLOWS_CIRCUIT_FAILURES = 4
    settings.WORKFLOWS_CIRCUIT_PROBE_SECONDS = 60
    monkeypatch.setattr(circuits, "FIRST_PROBE_SECONDS", 30.0)  # no probe before we say
    DEPENDENCIES_DOWN["inventory"] = True
    journals = [tmp_path / f"journal-{i}" for i in range(4)]
    runs = [workflow_start("test.dependent", {"journal": str(j)}) for j in journals]
    assert queue_capture.drain() == ["suspended"] * 4
    # The first two runs' four failures opened the circuit: the last two never called.
    calls = lambda: [len(journal_lines(j)) for j in journals]  # noqa: E731
    assert calls() == [2, 2, 0, 0]
    assert Circuit.objects.get(dependency="inventory").state == CircuitState.OPEN
    on_circuit = Wait.objects.filter(run__in=runs[1:], data__circuit=True)
    assert on_circuit.count() == 3  # they wait for the circuit, until the horizon at most
    assert all(w.deadline > later(3500) for w in on_circuit)
    waiting = run_waiting_for(WorkflowRun.objects.get(pk=runs[3].pk))
    assert waiting is not None and waiting.circuit_open and waiting.attempt == 1
    assert "circuit open" in waiting_for_text(waiting)

    # The first run's backoff comes due while the circuit is open: it waits on, uncalled.
    assert retry_waits_wake(now=later(5)) == 1
    assert queue_capture.drain() == ["suspended"]
    assert calls() == [2, 2, 0, 0]

    # Once the probe is due, the wake-up hands it to the run that waited longest: one
    # call; it fails, and the circuit stays open with a longer pause.
    assert retry_waits_wake(now=later(31)) == 1
    assert queue_capture.drain() == ["suspended"]
    assert calls() == [3, 2, 0, 0]
    circuit = Circuit.objects.get(dependency="inventory")
    assert circuit.state == CircuitState.OPEN and circuit.probe_interval == 60
    assert retry_waits_wake(now=later(40)) == 0

    # The dependency is back: the next probe succeeds and wakes every other run at once,
    # long before their own backoff times.
    DEPENDENCIES_DOWN["inventory"] = False
    assert retry_waits_wake(now=later(61)) == 1
    assert queue_capture.drain() == ["completed"] * 4
    assert all(status_of(run) == RunStatus.COMPLETED for run in runs)
    assert calls() == [5, 4, 2, 2]  # each: its calls, then the step "after"
    assert Circuit.objects.get(dependency="inventory").state == CircuitState.CLOSED
