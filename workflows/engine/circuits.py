"""A circuit per outside dependency (Stripe, SMTP, each model provider), shared by every
worker process and machine through its `Circuit` row.

- **closed**: attempts go out. Each transient failure (any run, any process) adds one to
  `consecutive_failures`, each success sets it back to 0.
- **open** after `WORKFLOWS_CIRCUIT_FAILURES` consecutive failures: no attempt goes out;
  a step waits for the circuit (durably, see `context.LiveStepRunner.run_step`) instead of
  hammering a dead server, and an agent's tool call is told the dependency is down.
- **half-open**: once `probe_at` passes, one attempt, the probe, is let through (its
  holder, a run, holds it until `probe_expires_at`; a holder that died gives it up). The
  wake tick (`services.retry_waits_wake`) hands the probe to the run that has waited
  longest; a new run asking first takes it itself.
- The probe succeeds: closed, and every run waiting for the dependency is woken at once
  (`services.dependency_waiters_wake`), not at its own next backoff time. It fails: open
  again, and the pause before the next probe doubles, from 1 s up to
  `WORKFLOWS_CIRCUIT_PROBE_SECONDS`.

The common case, a closed circuit, costs nothing per step: each process keeps a snapshot
of the circuits that are not clean (open, half-open, or with failures counted), read at
most every `SNAPSHOT_SECONDS`, and only talks to the database about those.
"""

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from workflows.engine.redaction import redact
from workflows.engine.runtime import run_sync
from workflows.models import Circuit, CircuitState

logger = logging.getLogger(__name__)

SNAPSHOT_SECONDS = 1.0
FIRST_PROBE_SECONDS = 1.0
ERROR_MAX_LENGTH = 500


class Admission(Enum):
    GO = "go"  # the circuit is closed
    PROBE = "probe"  # the circuit is half-open and this attempt is its probe
    WAIT = "wait"  # the circuit is open: do not call the dependency now


@dataclass(frozen=True)
class _Known:
    state: str
    probe_at: datetime | None


class _Snapshot:
    """This process's view of the circuits that are not clean."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.circuits: dict[str, _Known] = {}
        self.read_at = float("-inf")
        # Failures this process counted since: the next success here must reset them.
        self.dirty: set[str] = set()

    def fresh(self) -> bool:
        return time.monotonic() - self.read_at < SNAPSHOT_SECONDS

    def refresh(self) -> dict[str, _Known]:
        if self.fresh():
            return self.circuits
        rows = Circuit.objects.filter(
            ~Q(state=CircuitState.CLOSED) | Q(consecutive_failures__gt=0)
        ).values_list("dependency", "state", "probe_at")
        circuits = {dependency: _Known(state, probe_at) for dependency, state, probe_at in rows}
        with self.lock:
            self.circuits, self.read_at = circuits, time.monotonic()
        return circuits


_snapshot = _Snapshot()


def circuits_forget() -> None:
    """Drop this process's snapshot (tests, and after writing circuit rows by hand)."""
    global _snapshot
    _snapshot = _Snapshot()


def known_clean(dependency: str) -> bool:
    """True when this process knows, without asking the database, that the circuit is
    closed with no failure counted: the attempt may go and its success changes nothing."""
    snapshot = _snapshot
    return (
        snapshot.fresh()
        and dependency not in snapshot.circuits
        and dependency not in snapshot.dirty
    )


def circuit_probe_at(dependency: str) -> datetime | None:
    """When the open circuit of `dependency` lets its next probe go, as this process last
    read it (None: closed, or not known to be open)."""
    known = _snapshot.refresh().get(dependency)
    return known.probe_at if known is not None and known.state != CircuitState.CLOSED else None


def circuit_still_open(dependency: str) -> bool:
    """Whether the circuit is open or half-open in the database, now."""
    return Circuit.objects.filter(dependency=dependency).exclude(state=CircuitState.CLOSED).exists()


def _probe_seconds() -> float:
    return float(settings.WORKFLOWS_CIRCUIT_PROBE_SECONDS)


def _probe_ttl() -> timedelta:
    # A probe is an attempt of a running run; a holder that died stops renewing its lease.
    return timedelta(seconds=settings.WORKFLOWS_LEASE_SECONDS)


def _probe_due(now: datetime) -> Q:
    return Q(state=CircuitState.OPEN, probe_at__lte=now) | Q(
        state=CircuitState.HALF_OPEN, probe_expires_at__lt=now
    )


def circuit_probe_take(dependency: str, *, holder: str, now: datetime | None = None) -> bool:
    """Make `holder` the probe of the circuit if a probe is due: one conditional UPDATE,
    so two processes never both take it."""
    now = now or timezone.now()
    return bool(
        Circuit.objects.filter(_probe_due(now), dependency=dependency).update(
            state=CircuitState.HALF_OPEN,
            probe_holder=holder,
            probe_expires_at=now + _probe_ttl(),
            updated_at=now,
        )
    )


def circuits_probe_due(*, now: datetime | None = None) -> list[str]:
    """The dependencies whose circuit may let a probe go now."""
    now = now or timezone.now()
    return list(Circuit.objects.filter(_probe_due(now)).values_list("dependency", flat=True))


def circuit_admit(dependency: str, *, holder: str, now: datetime | None = None) -> Admission:
    """May `holder` (a run) call `dependency` now?"""
    if dependency not in _snapshot.refresh() and dependency not in _snapshot.dirty:
        return Admission.GO
    now = now or timezone.now()
    row = Circuit.objects.filter(dependency=dependency).first()
    if row is None or row.state == CircuitState.CLOSED:
        return Admission.GO
    if row.state == CircuitState.HALF_OPEN and row.probe_holder == holder:
        return Admission.PROBE
    if circuit_probe_take(dependency, holder=holder, now=now):
        logger.info("circuit of %s: probing with run %s", dependency, holder)
        return Admission.PROBE
    return Admission.WAIT


def circuit_succeeded(dependency: str, *, now: datetime | None = None) -> bool:
    """An attempt at `dependency` succeeded: the circuit closes (waking every run that
    waits for it) and the failure count goes back to 0. Returns whether it was open.

    It writes only when this process's view (the snapshot, read again if older than
    `SNAPSHOT_SECONDS`) shows the circuit not clean, or this process counted a failure
    since: a success on a healthy circuit, nearly every call, makes no statement (two
    UPDATEs matching nothing were 2.8 % of the workers' CPU, and SQLite write-lock
    traffic). The rule across processes: a failure or opening recorded elsewhere is
    reset by the first success, in any process, that starts after it is visible in that
    process's snapshot, so at most `SNAPSHOT_SECONDS` late; an opening missed in that
    window closes through its probe as usual. `circuit_exit_succeeded` follows the
    same rule without even the thread hop."""
    snapshot = _snapshot
    if dependency not in snapshot.refresh() and dependency not in snapshot.dirty:
        return False
    now = now or timezone.now()
    circuits = Circuit.objects.filter(dependency=dependency)
    closed = circuits.exclude(state=CircuitState.CLOSED).update(
        state=CircuitState.CLOSED,
        consecutive_failures=0,
        probe_at=None,
        probe_interval=0,
        probe_holder="",
        probe_expires_at=None,
        updated_at=now,
    )
    if not closed:
        circuits.filter(consecutive_failures__gt=0).update(consecutive_failures=0, updated_at=now)
    _snapshot.dirty.discard(dependency)
    _snapshot.circuits.pop(dependency, None)
    if closed:
        from workflows.engine.services import dependency_waiters_wake  # services use this module

        woken = dependency_waiters_wake(dependency=dependency, now=now)
        logger.warning("circuit of %s closed: it answers again; %d run(s) woken", dependency, woken)
    return bool(closed)


def circuit_failed(
    dependency: str, *, holder: str, error: str, now: datetime | None = None
) -> bool:
    """An attempt at `dependency` failed transiently: count it, open the circuit after
    WORKFLOWS_CIRCUIT_FAILURES in a row, or open it again after a failed probe. Returns
    whether the circuit is open now (the caller then waits for it)."""
    now = now or timezone.now()
    error = redact(error)[:ERROR_MAX_LENGTH]
    _snapshot.dirty.add(dependency)
    row, _ = Circuit.objects.get_or_create(dependency=dependency)
    counted = {
        "consecutive_failures": F("consecutive_failures") + 1,
        "last_error": error,
        "last_failure_at": now,
        "updated_at": now,
    }
    pause = min(max(row.probe_interval * 2, FIRST_PROBE_SECONDS), _probe_seconds())
    reopened = Circuit.objects.filter(
        pk=row.pk, state=CircuitState.HALF_OPEN, probe_holder=holder
    ).update(
        state=CircuitState.OPEN,
        probe_holder="",
        probe_expires_at=None,
        probe_interval=pause,
        probe_at=now + timedelta(seconds=pause),
        **counted,
    )
    if reopened:
        logger.info("circuit of %s: the probe failed; next probe in %.0f s", dependency, pause)
        _remember(dependency, CircuitState.OPEN, now + timedelta(seconds=pause))
        return True
    Circuit.objects.filter(pk=row.pk).update(**counted)
    threshold = settings.WORKFLOWS_CIRCUIT_FAILURES
    first = min(FIRST_PROBE_SECONDS, _probe_seconds())
    if threshold and Circuit.objects.filter(
        pk=row.pk, state=CircuitState.CLOSED, consecutive_failures__gte=threshold
    ).update(
        state=CircuitState.OPEN,
        opened_at=now,
        probe_interval=first,
        probe_at=now + timedelta(seconds=first),
        updated_at=now,
    ):
        logger.warning(
            "circuit of %s opened after %d consecutive failures; last: %s",
            dependency,
            threshold,
            error,
        )
    current = Circuit.objects.filter(pk=row.pk).values_list("state", "probe_at").get()
    _remember(dependency, *current)
    return bool(current[0] != CircuitState.CLOSED)


def _remember(dependency: str, state: str, probe_at: datetime | None) -> None:
    with _snapshot.lock:
        _snapshot.circuits = {**_snapshot.circuits, dependency: _Known(state, probe_at)}


# --- for the engine's event loop: no thread hop while the circuit is known clean ---------


async def circuit_enter(dependency: str | None, *, holder: str) -> Admission:
    if dependency is None or known_clean(dependency):
        return Admission.GO
    return await run_sync(circuit_admit)(dependency, holder=holder)


async def circuit_exit_succeeded(dependency: str | None) -> None:
    if dependency is not None and not known_clean(dependency):
        await run_sync(circuit_succeeded)(dependency)


async def circuit_exit_failed(dependency: str, *, holder: str, exc: BaseException) -> bool:
    return await run_sync(circuit_failed)(
        dependency, holder=holder, error=f"{type(exc).__name__}: {exc}"
    )
