"""What a workflow function sees: `ctx.run_id`, `ctx.workflow_id` and `ctx.step`.

Every `ctx.step.*` call has a key, unique within the run. On replay a completed key
returns its stored output without running anything; otherwise the step runs and its
output is committed (one statement, fenced by the run's lease) before the workflow
goes on.

`StepContext.execute_step` is the one path of every step (workflows' `run`, the engine's
own steps, the agent runtime's model and tool calls): it replays from the run's `History`
and hands a step that has no record to the context's `StepRunner`. A worker's runner
(`LiveStepRunner`) runs and commits it; `replay_check`'s runs nothing. Both therefore
replay, and find divergences, with the same code.

Over 500 lines because the step API (`StepContext`), the live runner (`LiveStepRunner`)
and the context they act on (`WorkflowContext`) share the context's private commit,
usage and suspend methods; split, those would be private names imported across modules.
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

from workflows import observability
from workflows.engine import serialization, transitions
from workflows.engine.circuits import (
    Admission,
    circuit_enter,
    circuit_exit_failed,
    circuit_exit_succeeded,
    circuit_still_open,
)
from workflows.engine.errors import (
    DependencyUnavailableError,
    LeaseLostError,
    NonRetryableError,
    StepFailedError,
    Suspended,
)
from workflows.engine.history import History
from workflows.engine.idempotency import step_idempotency_key
from workflows.engine.leases import lease_fenced_insert
from workflows.engine.redaction import redact
from workflows.engine.retry import RetryPolicy, dependency_label, dependency_name
from workflows.engine.runtime import SegmentReleased, run_sync, segment_should_stop
from workflows.engine.services import retry_wait_release
from workflows.models import (
    RETRY_WAIT,
    StepKind,
    StepRecord,
    StepStatus,
    Wait,
    WaitStatus,
    WorkflowRun,
)

if TYPE_CHECKING:
    from workflows.engine.registry import WorkflowDefinition
    from workflows.observability import _Segment

DEFAULT_RETRY = RetryPolicy()
# Sleeps up to this long happen in the worker; longer ones suspend the run and free it.
INLINE_SLEEP_MAX_SECONDS = 5.0
# A suspend without a timeout still gets a deadline: no wait may be left without one.
DEFAULT_SUSPEND_TIMEOUT = timedelta(days=30)


class Invocation(Protocol):
    """What `agent_invoke_and_wait` runs: anything that can execute itself as steps."""

    async def invoke(self, ctx: "WorkflowContext", key: str) -> Any: ...


# Steps are often closures made anew for each run, and resolving a string annotation is
# an eval: resolved once per code object and raw annotation (the same code object comes
# from the same module, so resolves against the same globals).
_return_annotations: dict[tuple[Any, Any], Any] = {}


def _return_annotation(fn: Callable[..., Any]) -> Any:
    code = getattr(fn, "__code__", None)
    key = (code, getattr(fn, "__annotations__", {}).get("return"))
    try:
        return _return_annotations[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable annotation: resolved every time
        code = None
    try:
        annotation = get_type_hints(fn).get("return")
    except (NameError, TypeError):
        annotation = None
    if code is not None:
        _return_annotations[key] = annotation
    return annotation


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


def patch_key(change_id: str) -> str:
    """The key of the marker step that records a run took a patched branch."""
    return f"{PATCH_KEY_PREFIX}{change_id}"


@dataclass(frozen=True)
class StepCall:
    """A step the run has no record of, as `execute_step` hands it to the runner."""

    key: str
    position: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    retry: RetryPolicy | None
    kind: StepKind
    input: Any
    meta: Callable[[Any], dict[str, Any]] | None
    annotation: Any  # the output's type, from `fn`'s return annotation


class StepRunner(Protocol):
    """What happens to a step or wait the history has no result for. The one point
    where a live segment and `replay_check` differ: everything before it is shared."""

    async def run_step(self, call: StepCall) -> Any:
        """Carry out the step and return its output (as replay would rebuild it)."""
        ...

    async def wait(
        self, key: str, position: int, kind: StepKind, data: dict[str, Any], window: timedelta
    ) -> NoReturn:
        """Park the run at a suspend or long sleep; never returns."""
        ...


class StepContext:
    """`ctx.step`: the durable operations a workflow may perform."""

    def __init__(self, ctx: "WorkflowContext", history: History, runner: StepRunner) -> None:
        self._ctx = ctx
        self._history = history
        self._runner = runner
        self._patches: dict[str, bool] = {}
        # Patch markers decided but not yet written: committed just before the next
        # step or suspend, so a marker is always in the history before anything after it.
        self._pending_markers: list[StepRecord] = []

    # -- versioning -----------------------------------------------------------------

    def _patch_decision(self, change_id: str, *, deprecated: bool) -> bool:
        if change_id in self._patches:
            return self._patches[change_id]
        key = patch_key(change_id)
        recorded = self._history.at(self._history.position)
        if recorded is not None and recorded.key == key:
            self._history.claim(key)  # the run took the new branch before: replay it
            decision = True
        elif recorded is not None:
            decision = False  # the run passed this point under the old code
        elif deprecated:
            decision = True  # no old run remains: nothing to record
        else:
            position, _ = self._history.claim(key)
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
        return await self.execute_step(key, fn, *args, retry=retry, **kwargs)

    async def execute_step(
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
        shown in the trace, and `meta` (extra fields taken from the result). For the
        engine's own steps and the agent runtime, which need those details; workflows
        call `run`.

        A step the history holds replays (a recorded failure raises `StepFailedError`
        again); any other goes to the context's runner.
        """
        position, record = self._history.claim(key)
        annotation = _return_annotation(fn)
        if record is not None and record.status == StepStatus.FAILED:
            raise StepFailedError(key, NonRetryableError(record.error), record.attempt)
        if record is not None:
            return serialization.load(record.output, annotation, record.output_type)
        call = StepCall(key, position, fn, args, kwargs, retry, kind, input, meta, annotation)
        return await self._runner.run_step(call)

    async def uuid(self, key: str) -> uuid.UUID:
        """A random UUID, the same one on every replay."""
        return uuid.UUID(await self.execute_step(key, lambda: str(uuid.uuid4())))

    async def now(self, key: str) -> datetime:
        """The current time, the same one on every replay."""
        return datetime.fromisoformat(
            await self.execute_step(key, lambda: timezone.now().isoformat())
        )

    async def sleep(self, key: str, seconds: float) -> None:
        """Sleep durably. A long sleep suspends the run and frees the worker; the
        periodic wait sweep wakes it (so long sleeps wake within one sweep period)."""
        if seconds <= INLINE_SLEEP_MAX_SECONDS:
            await self.execute_step(key, asyncio.sleep, seconds, kind=StepKind.SLEEP, input=seconds)
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
        position, record = self._history.claim(key)
        if record is not None:
            return record.output
        await self._runner.wait(key, position, kind, data, window)


class LiveStepRunner:
    """A worker's runner: runs a new step (retrying it, waiting durably for its
    dependency) and commits its record, fenced by the run's lease."""

    def __init__(self, ctx: "WorkflowContext") -> None:
        self._ctx = ctx

    async def run_step(self, call: StepCall) -> Any:
        key, position, fn, args, kwargs = call.key, call.position, call.fn, call.args, call.kwargs
        kind, meta, annotation, input = call.kind, call.meta, call.annotation, call.input
        if segment_should_stop():
            raise SegmentReleased(key)

        if input is None and (args or kwargs):
            input = _describe_arguments(args, kwargs)
        policy = call.retry or DEFAULT_RETRY
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

    async def wait(
        self, key: str, position: int, kind: StepKind, data: dict[str, Any], window: timedelta
    ) -> NoReturn:
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

    # The segment's span while tracing is on: set by `observability.segment_started`,
    # which alone reads it; the engine only carries it.
    observed_segment: "_Segment | None" = None

    def __init__(
        self,
        *,
        run: WorkflowRun,
        definition: "WorkflowDefinition",
        history: History,
        lease_token: str,
        retry_waits: list[Wait] | None = None,
        runner: StepRunner | None = None,
    ) -> None:
        """`runner`: what happens to steps the history has no record of; a worker's
        (`LiveStepRunner`) unless replay passes its own."""
        self.run_id: uuid.UUID = run.id
        self.workflow_id: str = run.workflow_id
        self.definition = definition
        # Public so that whoever executes the workflow function can check, when it
        # returns, that it reached every recorded step (`history.check_complete()`).
        self.history = history
        self._lease_token = lease_token
        self.usage: dict[str, int] = {}
        for record in history.records:
            self._add_usage(record)
        # Waits of steps for their dependency in earlier segments: their attempts so far.
        self._retry_waits = {wait.key: wait for wait in retry_waits or []}
        self.step = StepContext(self, history, runner or LiveStepRunner(self))

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

    def _run_suspend(self, now: datetime) -> None:
        """Park the run (its slot is freed), fenced by the lease like a step commit;
        called first in the transaction that records what it waits for."""
        if not transitions.suspend(
            run_id=self.run_id, token=self._lease_token, usage=self.usage, now=now
        ):
            raise LeaseLostError(f"Run {self.run_id} is no longer leased by this worker")

    def _suspend(
        self, key: str, position: int, kind: StepKind, data: Any, window: timedelta
    ) -> None:
        now = timezone.now()
        self._flush_markers()
        with transaction.atomic():
            self._run_suspend(now)
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

    def _park(self, key: str, position: int, data: dict[str, Any], deadline: datetime) -> None:
        """Record the step's wait for its dependency (the same row each time the step
        waits again) and park the run, like a suspend."""
        now = timezone.now()
        self._flush_markers()
        with transaction.atomic():
            self._run_suspend(now)
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
        # The circuit may have closed (and woken its waiters) between the refusal and this
        # commit: then nobody else would wake this run before the horizon.
        if data["circuit"] and not circuit_still_open(data["dependency"]):
            retry_wait_release(wait_id=wait.pk, now=timezone.now())
