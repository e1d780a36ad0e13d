"""What a workflow function sees: `ctx.run_id`, `ctx.workflow_id` and `ctx.step`.

Every `ctx.step.*` call has a key, unique within the run. On replay a completed key
returns its stored output without running anything; otherwise the step runs and its
output is committed (one statement, fenced by the run's lease) before the workflow
goes on.
"""

import asyncio
import inspect
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, get_type_hints

from django.db import transaction
from django.utils import timezone

from . import observability, serialization
from .circuits import (
    Admission,
    circuit_enter,
    circuit_exit_failed,
    circuit_exit_succeeded,
    circuit_still_open,
)
from .errors import (
    DependencyUnavailableError,
    LeaseLostError,
    NonDeterminismError,
    NonRetryableError,
    StepFailedError,
    Suspended,
)
from .idempotency import step_idempotency_key
from .leases import lease_check, lease_fenced_insert
from .models import (
    RETRY_WAIT,
    RunStatus,
    StepKind,
    StepRecord,
    StepStatus,
    Wait,
    WaitStatus,
    WorkflowRun,
)
from .redaction import redact
from .retry import RetryPolicy, dependency_label, dependency_name
from .runtime import SegmentReleased, run_sync, segment_should_stop
from .services import retry_wait_release

if TYPE_CHECKING:
    from .observability import _Segment
    from .registry import WorkflowDefinition

DEFAULT_RETRY = RetryPolicy()
# Sleeps up to this long happen in the worker; longer ones suspend the run and free it.
INLINE_SLEEP_MAX_SECONDS = 5.0
# A suspend without a timeout still gets a deadline: no wait may be left without one.
DEFAULT_SUSPEND_TIMEOUT = timedelta(days=30)


class Invocation(Protocol):
    """What `agent_invoke_and_wait` runs: anything that can execute itself as steps."""

    async def invoke(self, ctx: "WorkflowContext", key: str) -> Any: ...


def _return_annotation(fn: Callable[..., Any]) -> Any:
    try:
        return get_type_hints(fn).get("return")
    except (NameError, TypeError):
        return None


def _describe_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A step's arguments as the trace shows them (a repr where JSON cannot hold them)."""
    described: dict[str, Any] = {}
    for name, values in (("args", list(args)), ("kwargs", kwargs)):
        if values:
            try:
                described[name] = serialization.to_jsonable_python(values)
            except Exception:
                described[name] = repr(values)
    return described


@dataclass(frozen=True)
class _Outage:
    """What a step knows of its dependency's outage so far: the attempts it made, when
    the first one failed, and the last error."""

    attempts: int = 0
    first_failed_at: datetime | None = None
    error: str = ""

    @classmethod
    def of(cls, wait: Wait | None) -> "_Outage":
        """As the step's last wait for its dependency recorded it (nothing: no outage)."""
        if wait is None:
            return cls()
        data = wait.data or {}
        first = data.get("first_failed_at")
        return cls(
            attempts=int(data.get("attempts", 0)),
            first_failed_at=datetime.fromisoformat(first) if first else None,
            error=str(data.get("error", "")),
        )

    def failed(self, attempt: int, exc: BaseException) -> "_Outage":
        return replace(
            self,
            attempts=attempt,
            first_failed_at=self.first_failed_at or timezone.now(),
            error=redact(f"{type(exc).__name__}: {exc}"),
        )

    def circuit_refused(self, dependency: str) -> "_Outage":
        return replace(
            self,
            first_failed_at=self.first_failed_at or timezone.now(),
            error=self.error or f"the circuit of {dependency_name(dependency)} is open",
        )

    def horizon_end(self, policy: RetryPolicy) -> datetime:
        return (self.first_failed_at or timezone.now()) + timedelta(
            seconds=policy.retry_horizon()
        )

    def past_horizon(self, policy: RetryPolicy) -> bool:
        return self.first_failed_at is not None and timezone.now() >= self.horizon_end(policy)

    def unavailable(self, policy: RetryPolicy) -> DependencyUnavailableError:
        return DependencyUnavailableError(
            dependency_label(policy.dependency or ""),
            horizon=policy.retry_horizon(),
            attempts=self.attempts,
            last_error=self.error,
        )


PATCH_KEY_PREFIX = "patch/"
DIVERGENCE_HELP = (
    "Wrap the change in `if ctx.patched('<change-id>'):` so that runs started before it "
    "keep their old path, and run `manage.py replay_check` before deploying "
    "(`manage.py fork_run` restarts a failed run from a step under the new code)."
)


def patch_key(change_id: str) -> str:
    """The key of the marker step that records a run took a patched branch."""
    return f"{PATCH_KEY_PREFIX}{change_id}"


class StepContext:
    """`ctx.step`: the durable operations a workflow may perform."""

    def __init__(self, ctx: "WorkflowContext", history: list[StepRecord]) -> None:
        self._ctx = ctx
        self._by_key = {record.key: record for record in history}
        self._by_position = {record.position: record for record in history}
        self._position = 0
        self._seen: set[str] = set()
        self._patches: dict[str, bool] = {}
        # Patch markers decided but not yet written: committed just before the next
        # step or suspend, so a marker is always in the history before anything after it.
        self._pending_markers: list[StepRecord] = []

    def _diverged(
        self, key: str | None, position: int, recorded: str | None
    ) -> NonDeterminismError:
        asked = f"step {key!r}" if key else "no further step"
        there = f"{recorded!r}" if recorded else "nothing"
        return NonDeterminismError(
            f"Run {self._ctx.run_id} of workflow {self._ctx.workflow_id!r} asked for {asked} "
            f"at position {position}, but its history has {there} there: the workflow code "
            f"changed under a live run (a step added, removed, renamed or moved before "
            f"{recorded or key!r}). {DIVERGENCE_HELP}",
            position=position,
            expected=recorded,
            found=key,
        )

    # -- versioning -----------------------------------------------------------------

    def _patch_decision(self, change_id: str, *, deprecated: bool) -> bool:
        if change_id in self._patches:
            return self._patches[change_id]
        key = patch_key(change_id)
        recorded = self._by_position.get(self._position)
        if recorded is not None and recorded.key == key:
            self._claim(key)  # the run took the new branch before: replay it
            decision = True
        elif recorded is not None:
            decision = False  # the run passed this point under the old code
        elif deprecated:
            decision = True  # no old run remains: nothing to record
        else:
            position, _ = self._claim(key)
            self._pending_markers.append(
                StepRecord(
                    run_id=self._ctx.run_id,
                    key=key,
                    position=position,
                    kind=StepKind.STEP,
                    status=StepStatus.COMPLETED,
                    output=True,
                    started_at=timezone.now(),
                    finished_at=timezone.now(),
                )
            )
            decision = True
        self._patches[change_id] = decision
        return decision

    # -- replay bookkeeping ---------------------------------------------------------

    def _claim(self, key: str) -> tuple[int, StepRecord | None]:
        """Take the next position for `key` and return its recorded result, if any."""
        if not key or not isinstance(key, str):
            raise ValueError("A step key must be a non-empty string")
        if key in self._seen:
            raise ValueError(f"Step key {key!r} is used twice in run {self._ctx.run_id}")
        self._seen.add(key)
        position = self._position
        self._position += 1
        at_position = self._by_position.get(position)
        if at_position is not None and at_position.key != key:
            raise self._diverged(key, position, at_position.key)
        record = self._by_key.get(key)
        if record is not None and record.position != position:
            raise self._diverged(key, position, None)
        return position, record

    def _unreached(self) -> StepRecord | None:
        """The first recorded step the code has not asked for, when it stops early."""
        later = [p for p in self._by_position if p >= self._position]
        return self._by_position[min(later)] if later else None

    # -- public operations ----------------------------------------------------------

    async def run(
        self,
        key: str,
        fn: Callable[..., Any],
        *args: Any,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run `fn(*args, **kwargs)` (sync or async) once, durably, and return its output.

        A pydantic model output comes back as the same model on replay (the function's
        return annotation, or the stored class, decides the type).
        """
        return await self._run_traced(key, fn, *args, retry=retry, **kwargs)

    async def _run_traced(
        self,
        key: str,
        fn: Callable[..., Any],
        *args: Any,
        retry: RetryPolicy | None = None,
        kind: StepKind = StepKind.STEP,
        input: Any = None,
        meta: Callable[[Any], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> Any:
        """`run` with the trace details the engine records: the step's kind, the input
        shown in the trace, and `meta` (extra fields taken from the result). Internal: the
        agent runtime and `sleep` use it; workflows call `run`."""
        position, record = self._claim(key)
        annotation = _return_annotation(fn)
        if record is not None and record.status == StepStatus.FAILED:
            raise StepFailedError(key, NonRetryableError(record.error), record.attempt)
        if record is not None:
            return serialization.load(record.output, annotation, record.output_type)
        if segment_should_stop():
            raise SegmentReleased(key)

        if input is None and (args or kwargs):
            input = _describe_arguments(args, kwargs)
        policy = retry or DEFAULT_RETRY
        dependency = policy.dependency
        holder = str(self._ctx.run_id)
        # A step that waited for its dependency before goes on counting from there.
        waited = self._ctx._retry_waits.get(key)
        outage = _Outage.of(waited)
        started_at = waited.created_at if waited is not None else timezone.now()
        attempt = outage.attempts

        def completed(result: Any) -> StepRecord:
            return StepRecord(
                run_id=self._ctx.run_id,
                key=key,
                position=position,
                kind=kind,
                status=StepStatus.COMPLETED,
                input=serialization.dump(key, input),
                output=serialization.dump(key, result, annotation),
                output_type=serialization.type_path(result),
                attempt=attempt,
                meta=meta(result) if meta else {},
                started_at=started_at,
                finished_at=timezone.now(),
            )

        def run_and_commit() -> tuple[Any, StepRecord | None]:
            # One hop to the worker's thread both runs a sync function and commits its
            # step: thread hops are a large part of a short step's cost.
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                return result, None
            record = completed(result)
            self._ctx._commit_step(record)
            return result, record

        async def give_up(exc: BaseException) -> NoReturn:
            await self._record_failure(key, position, kind, input, exc, attempt, started_at)
            raise StepFailedError(key, exc, attempt) from exc

        while True:
            if dependency is not None:
                admission = await circuit_enter(dependency, holder=holder)
                if admission is Admission.WAIT:  # the circuit is open: no call now
                    outage = outage.circuit_refused(dependency)
                    if outage.past_horizon(policy):
                        await give_up(outage.unavailable(policy))
                    await self._wait_for_dependency(key, position, policy, outage, None)
            attempt += 1
            try:
                if inspect.iscoroutinefunction(fn):
                    result, record = await fn(*args, **kwargs), None
                else:
                    result, record = await run_sync(run_and_commit)()
                    if inspect.isawaitable(result):
                        result = await result
                if record is None:
                    record = completed(result)
                    await run_sync(self._ctx._commit_step)(record)
                break
            except LeaseLostError:
                raise
            except Exception as exc:
                if dependency is None or not policy.transient(exc):
                    if policy.should_retry(exc, attempt):
                        await asyncio.sleep(policy.delay(attempt, exc))
                        continue
                    await give_up(exc)
                circuit_open = await circuit_exit_failed(dependency, holder=holder, exc=exc)
                outage = outage.failed(attempt, exc)
                if outage.past_horizon(policy):
                    await give_up(outage.unavailable(policy))
                pause = policy.delay(attempt, exc)
                # The first attempts of a blip wait in the worker; a longer outage, or an
                # open circuit, parks the run and frees the worker.
                inline = (
                    not circuit_open
                    and attempt < policy.max_attempts
                    and pause <= INLINE_SLEEP_MAX_SECONDS
                )
                observability.step_retried(dependency, durable=not inline)
                if inline:
                    await asyncio.sleep(pause)
                    continue
                await self._wait_for_dependency(
                    key, position, policy, outage, None if circuit_open else pause
                )
        await circuit_exit_succeeded(dependency)
        return serialization.load(record.output, annotation, record.output_type)

    async def uuid(self, key: str) -> uuid.UUID:
        """A random UUID, the same one on every replay."""
        return uuid.UUID(await self._run_traced(key, lambda: str(uuid.uuid4())))

    async def now(self, key: str) -> datetime:
        """The current time, the same one on every replay."""
        return datetime.fromisoformat(
            await self._run_traced(key, lambda: timezone.now().isoformat())
        )

    async def sleep(self, key: str, seconds: float) -> None:
        """Sleep durably. A long sleep suspends the run and frees the worker; the
        periodic wait sweep wakes it (so long sleeps wake within one sweep period)."""
        if seconds <= INLINE_SLEEP_MAX_SECONDS:
            await self._run_traced(key, asyncio.sleep, seconds, kind=StepKind.SLEEP, input=seconds)
            return
        await self._wait(key, StepKind.SLEEP, {"seconds": seconds}, timedelta(seconds=seconds))

    async def suspend(
        self, key: str, data: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Suspend the run until `run_resume(run_id, key, ...)` or the timeout.

        Returns `{"data": <resume data>, "resumed_by": ..., "resumed_at": ...,
        "timed_out": False}`; on timeout `{"data": {}, ..., "timed_out": True}`.
        """
        window = timedelta(seconds=timeout) if timeout is not None else DEFAULT_SUSPEND_TIMEOUT
        resumed: dict[str, Any] = await self._wait(key, StepKind.SUSPEND, data or {}, window)
        return resumed

    async def agent_invoke_and_wait(self, key: str, invocation: Invocation) -> Any:
        """Run an agent (see `workflows.agents`) inside this run; each of its model and
        tool calls is a step under `key`."""
        return await invocation.invoke(self._ctx, key)

    # -- internals ------------------------------------------------------------------

    async def _wait(self, key: str, kind: StepKind, data: dict[str, Any], window: timedelta) -> Any:
        position, record = self._claim(key)
        if record is not None:
            return record.output
        data = serialization.dump(key, data)
        started_at = timezone.now()
        await run_sync(self._ctx._suspend)(key, position, kind, data, window)
        observability.wait_recorded(self._ctx, key, position, kind, started_at)
        raise Suspended(key)

    async def _wait_for_dependency(
        self,
        key: str,
        position: int,
        policy: RetryPolicy,
        outage: _Outage,
        pause: float | None,
    ) -> NoReturn:
        """Park the run until the step's next attempt: after `pause` seconds, or (None)
        until the dependency's circuit closes; at the latest at the end of the horizon,
        when the step gives up. The wait is a `Wait` row: it survives any restart, and
        the wake tick or the circuit's closing queues the run again."""
        now = timezone.now()
        horizon_end = outage.horizon_end(policy)
        deadline = horizon_end
        if pause is not None:
            deadline = min(now + timedelta(seconds=pause), horizon_end)
        data = {
            "dependency": policy.dependency,
            "attempts": outage.attempts,
            "first_failed_at": (outage.first_failed_at or now).isoformat(),
            "error": outage.error,
            "circuit": pause is None,
            "horizon": policy.retry_horizon(),
        }
        # Counted by `observability.step_retried`; no span of its own: the step's span,
        # sent when it finally commits, covers its waits (it starts at the first one).
        await run_sync(self._ctx._park)(key, position, data, deadline)
        raise Suspended(key)

    async def _record_failure(
        self,
        key: str,
        position: int,
        kind: StepKind,
        input: Any,
        exc: BaseException,
        attempt: int,
        started_at: datetime,
    ) -> None:
        try:
            stored_input = serialization.dump(key, input)
        except Exception:
            stored_input = None
        await run_sync(self._ctx._commit_step)(
            StepRecord(
                run_id=self._ctx.run_id,
                key=key,
                position=position,
                kind=kind,
                status=StepStatus.FAILED,
                input=stored_input,
                error=redact(f"{type(exc).__name__}: {exc}"),
                error_traceback=redact("".join(traceback.format_exception(exc))),
                attempt=attempt,
                started_at=started_at,
                finished_at=timezone.now(),
            )
        )


class WorkflowContext:
    """Passed to every workflow function as `ctx`."""

    # Set by `observability.segment_started` when tracing is on.
    _observed_segment: "_Segment"

    def __init__(
        self,
        *,
        run: WorkflowRun,
        definition: "WorkflowDefinition",
        history: list[StepRecord],
        lease_token: str,
        retry_waits: list[Wait] | None = None,
    ) -> None:
        self.run_id: uuid.UUID = run.id
        self.workflow_id: str = run.workflow_id
        self.definition = definition
        self._lease_token = lease_token
        self.usage: dict[str, int] = {}
        for record in history:
            self._add_usage(record)
        # Waits of steps for their dependency in earlier segments: their attempts so far.
        self._retry_waits = {wait.key: wait for wait in retry_waits or []}
        self.step = StepContext(self, history)

    def patched(self, change_id: str) -> bool:
        """Whether this run takes the branch of change `change_id`.

        True for runs that reach this point under the code that has the change (the
        decision is recorded, so every replay takes the same branch); False for runs
        whose history shows they passed this point before the change was deployed::

            if ctx.patched("risk-check-before-review"):
                await ctx.step.run("risk_check", risk_check, order_id)
            await ctx.step.suspend("fraud_review", ...)
        """
        return self.step._patch_decision(change_id, deprecated=False)

    def deprecate_patch(self, change_id: str) -> None:
        """For when no run from before `change_id` remains: the branch is unconditional
        now, and runs that recorded the decision still replay."""
        self.step._patch_decision(change_id, deprecated=True)

    def idempotency_key(self, step_key: str) -> str:
        """The key a step passes to an outside provider: stable across retries and
        replays of this run, different for every run and step."""
        return step_idempotency_key(self.run_id, step_key)

    def _add_usage(self, record: StepRecord) -> None:
        for name, count in record.meta.get("usage", {}).items():
            if isinstance(count, int):
                self.usage[name] = self.usage.get(name, 0) + count

    # The methods below run in the worker's synchronous thread (via sync_to_async).

    def _commit_step(self, record: StepRecord) -> None:
        self._flush_markers()
        lease_fenced_insert(record, self._lease_token)
        self._add_usage(record)
        observability.step_committed(self, record)

    def _flush_markers(self) -> None:
        markers, self.step._pending_markers = self.step._pending_markers, []
        for marker in markers:
            lease_fenced_insert(marker, self._lease_token)

    def _suspend(
        self, key: str, position: int, kind: StepKind, data: Any, window: timedelta
    ) -> None:
        now = timezone.now()
        self._flush_markers()
        with transaction.atomic():
            lease_check(self.run_id, self._lease_token)
            Wait.objects.get_or_create(
                run_id=self.run_id,
                key=key,
                defaults={
                    "position": position,
                    "kind": kind,
                    "data": data,
                    "deadline": now + window,
                },
            )
            WorkflowRun.objects.filter(pk=self.run_id).update(
                status=RunStatus.SUSPENDED,
                lease_owner="",
                lease_expires_at=None,
                usage=self.usage,
                updated_at=now,
            )

    def _park(self, key: str, position: int, data: dict[str, Any], deadline: datetime) -> None:
        """Record the step's wait for its dependency (the same row each time the step
        waits again) and park the run, like a suspend."""
        now = timezone.now()
        self._flush_markers()
        with transaction.atomic():
            lease_check(self.run_id, self._lease_token)
            wait, _ = Wait.objects.update_or_create(
                run_id=self.run_id,
                key=key,
                defaults={
                    "position": position,
                    "kind": RETRY_WAIT,
                    "data": data,
                    "deadline": deadline,
                    "status": WaitStatus.WAITING,
                    "resume_data": None,
                    "resumed_by": None,
                    "resumed_at": None,
                },
            )
            WorkflowRun.objects.filter(pk=self.run_id).update(
                status=RunStatus.SUSPENDED,
                lease_owner="",
                lease_expires_at=None,
                usage=self.usage,
                updated_at=now,
            )
        # The circuit may have closed (and woken its waiters) between the refusal and this
        # commit: then nobody else would wake this run before the horizon.
        if data["circuit"] and not circuit_still_open(data["dependency"]):
            retry_wait_release(wait_id=wait.pk, now=timezone.now())
