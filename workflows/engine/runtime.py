"""What a segment runs on, wherever it runs: the `SegmentRuntime` a segment is handed
(`segment_execute(run_id, runtime)`), the inline one, and what the segment's code asks
of it (`run_sync`, `segment_should_stop`). The worker process's runtime, and the map of
which code runs on which thread, are in `workflows.worker.runtime`.
"""

import contextvars
import enum
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from asgiref.sync import sync_to_async

from workflows.engine.leases import LeaseKeeper

T = TypeVar("T")


class SegmentReleased(BaseException):
    """Raised at a step boundary of a segment whose worker is stopping. A
    `BaseException`, like `asyncio.CancelledError`, so that workflow code catching
    `Exception` cannot swallow it."""


class SegmentOutcome(enum.StrEnum):
    """How a segment ended (for logs, metrics and tests)."""

    SKIPPED = "skipped"  # not pending, or leased elsewhere: another delivery has it
    COMPLETED = "completed"
    FAILED = "failed"
    SUSPENDED = "suspended"  # waiting (suspend, long sleep, a dependency down)
    RELEASED = "released"  # its worker stopped; handed back to the queue
    LEASE_LOST = "lease_lost"  # cancelled or taken over while it ran


class SegmentRuntime:
    """What a segment runs on: where its sync work runs, who renews its lease, and
    whether it must stop at its next step."""

    keeper: LeaseKeeper

    async def call_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        raise NotImplementedError

    def must_stop(self) -> bool:
        return False


class InlineRuntime(SegmentRuntime):
    """One segment executed in the caller's thread (`run_execute`): sync work in that
    thread, as asgiref's `sync_to_async` does, so that it sees the caller's transaction."""

    def __init__(self) -> None:
        self.keeper = LeaseKeeper()

    async def call_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await sync_to_async(fn)(*args, **kwargs)

    async def close(self) -> None:
        await self.keeper.close()


_segment_runtime: contextvars.ContextVar[SegmentRuntime | None] = contextvars.ContextVar(
    "workflows_segment_runtime", default=None
)


@contextmanager
def segment_running_on(runtime: SegmentRuntime) -> Iterator[None]:
    """Run the enclosed segment code on `runtime` (set by `segment_execute`)."""
    token = _segment_runtime.set(runtime)
    try:
        yield
    finally:
        _segment_runtime.reset(token)


def segment_runtime() -> SegmentRuntime | None:
    """The runtime of the segment this code runs in, if any."""
    return _segment_runtime.get()


def run_sync(fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """`fn` as an awaitable that runs off the event loop, where the segment's runtime
    runs sync work: the worker's bounded thread pool, or the caller's thread inline.
    Outside a segment, in the caller's thread (asgiref's `sync_to_async`)."""
    runtime = _segment_runtime.get()
    if runtime is None:
        return sync_to_async(fn)

    async def call(*args: Any, **kwargs: Any) -> T:
        return await runtime.call_sync(fn, *args, **kwargs)

    return call


def segment_should_stop() -> bool:
    """True when the worker is stopping and segments must yield at their next step."""
    runtime = _segment_runtime.get()
    return runtime is not None and runtime.must_stop()
