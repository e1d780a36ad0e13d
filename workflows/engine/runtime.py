"""What a segment runs on, wherever it runs: the `SegmentRuntime` a segment is handed
(`segment_execute(run_id, runtime)`), the inline one, and what the segment's code asks
of it (`run_sync`, `segment_should_stop`). The worker process's runtime, and the map of
which code runs on which thread, are in `workflows.worker.runtime`.
"""

import asyncio
import contextvars
import enum
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, Protocol, TypeVar, cast

from asgiref.sync import sync_to_async

from workflows.engine.leases import LeaseKeeper, lease_renew_own_connection

logger = logging.getLogger(__name__)

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
    thread, as asgiref's `sync_to_async` does, so that it sees the caller's transaction.

    The lease is renewed from another thread, so that a sync step longer than the lease
    (which holds the caller's thread) keeps its run. Inside the caller's transaction
    (`in_transaction`) the renewal stays in the caller's thread, the only one that sees
    the run; nobody else can see it to take it over either."""

    def __init__(self, *, in_transaction: bool = False) -> None:
        self.keeper = LeaseKeeper(None if in_transaction else _renew_in_a_thread)
        loop_resources_hold()

    async def call_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await sync_to_async(fn)(*args, **kwargs)

    async def close(self) -> None:
        await self.keeper.close()
        await loop_resources_release()


async def _renew_in_a_thread(tokens: list[str]) -> int:
    return await asyncio.to_thread(lease_renew_own_connection, tokens)


class LoopResource(Protocol):
    async def close(self) -> None: ...


R = TypeVar("R", bound=LoopResource)


class _LoopResources:
    def __init__(self) -> None:
        self.by_key: dict[Hashable, LoopResource] = {}
        self.holders = 0


# Clients bound to an event loop (an httpx pool is): made once per key on each loop and
# shared by every segment on it, so connections are kept alive between calls; closed
# when the loop's owner ends (a worker's stop, the last inline segment on the loop).
# Weak keys: a loop nobody owns takes its resources with it when it goes.
_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopResources] = (
    weakref.WeakKeyDictionary()
)
_loops_lock = threading.Lock()


def _resources_of(loop: asyncio.AbstractEventLoop) -> _LoopResources:
    with _loops_lock:
        resources = _loops.get(loop)
        if resources is None:
            resources = _loops[loop] = _LoopResources()
        return resources


def loop_resource(key: Hashable, factory: Callable[[], R]) -> R:
    """The running loop's resource for `key`, made by `factory` the first time."""
    resources = _resources_of(asyncio.get_running_loop())
    found = resources.by_key.get(key)
    if found is None:
        found = resources.by_key[key] = factory()
    return cast(R, found)


def loop_resources_hold() -> None:
    """The running loop's resources stay open until `loop_resources_release`: inline
    segments nest on one loop (synchronous mode), and the outermost closes them."""
    _resources_of(asyncio.get_running_loop()).holders += 1


async def loop_resources_release() -> None:
    resources = _resources_of(asyncio.get_running_loop())
    resources.holders -= 1
    if resources.holders <= 0:
        await loop_resources_close()


async def loop_resources_close() -> None:
    """Close every resource made on the running loop (its owner is stopping)."""
    with _loops_lock:
        resources = _loops.pop(asyncio.get_running_loop(), None)
    for resource in resources.by_key.values() if resources else ():
        try:
            await resource.close()
        except Exception:
            logger.warning("closing %r failed", resource, exc_info=True)


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
        # A segment left unfinished on a stopped worker's loop (still in a slow step) is
        # closed later by the garbage collector, in whatever context it runs: its runtime
        # was never set there, so there is nothing to reset (`reset` would raise, and
        # Python print "Exception ignored").
        with suppress(ValueError):
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
