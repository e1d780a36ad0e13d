"""Many run segments in flight per worker process, on one event loop.

django-q2 stays the dispatcher: a task still means "execute this run's next segment".
In a `qcluster` worker process the task does not execute the segment itself; it hands
it to the process's `WorkerRuntime` and returns:

- the segments run as coroutines on one event loop (a thread of the worker process), so
  a run waiting on a model costs a coroutine, not a process;
- at most `WORKFLOWS_CONCURRENCY` are in flight: when every slot is taken the task
  blocks, so the worker takes no more tasks from django-q (back-pressure);
- sync work (the ORM, the Stripe SDK, SMTP) runs through `run_sync` on a pool of
  `WORKFLOWS_SYNC_THREADS` threads, each with its own database connection (borrowed
  from Django's pool on PostgreSQL);
- one `LeaseKeeper` renews every in-flight lease in one UPDATE;
- every `WORKFLOWS_WAKE_SECONDS` it queues the runs whose step's next attempt at a
  dependency is due and hands out the circuits' probes (`services.retry_waits_wake`), so
  a run waiting out an outage wakes within about a second of its time;
- on SIGTERM (to the worker, or to the whole process group) or when django-q recycles
  the process, the runtime stops taking segments, lets those in flight finish for up to
  `WORKFLOWS_DRAIN_SECONDS`, then has the rest stop at their next step and hands their
  runs back to the queue (`lease_release`), so another worker continues them at once.

Outside a worker (synchronous mode, tests, `run_execute`) a segment runs inline.
"""

import asyncio
import concurrent.futures
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from . import observability
from .leases import LeaseKeeper, lease_release

logger = logging.getLogger(__name__)

T = TypeVar("T")

# After the drain deadline, segments still running get this long to stop at their next
# step boundary before their leases are released from outside.
STOP_GRACE_SECONDS = 5.0


class WorkerStopping(BaseException):
    """Raised in a worker's main thread by SIGTERM: stop taking tasks and drain."""


class SegmentReleased(BaseException):
    """Raised at a step boundary of a segment whose worker is stopping. A
    `BaseException`, like `asyncio.CancelledError`, so that workflow code catching
    `Exception` cannot swallow it."""


class WorkerRuntime:
    """The event loop, the sync thread pool and the slots of one worker process."""

    def __init__(
        self, *, concurrency: int, sync_threads: int, wake_seconds: float | None = None
    ) -> None:
        self.concurrency = concurrency
        self.loop = asyncio.new_event_loop()
        self.executor = concurrent.futures.ThreadPoolExecutor(
            sync_threads, thread_name_prefix="workflows-sync"
        )
        self.keeper = LeaseKeeper()
        self._slots = threading.BoundedSemaphore(concurrency)
        self._in_flight: set[concurrent.futures.Future[str]] = set()
        self._lock = threading.Lock()
        self.accepting = True
        self.releasing = False  # segments stop at their next step
        self._thread = threading.Thread(target=self._run_loop, name="workflows-loop", daemon=True)
        self._thread.start()
        self._waker: concurrent.futures.Future[None] | None = None
        if wake_seconds:
            self._waker = asyncio.run_coroutine_threadsafe(
                self._wake_forever(wake_seconds), self.loop
            )

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _wake_forever(self, seconds: float) -> None:
        from .services import retry_waits_wake

        while self.accepting:
            try:
                await self.call_sync(retry_waits_wake)
            except Exception:
                logger.exception("waking runs whose retry is due failed; trying again")
            await asyncio.sleep(seconds)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def owns_current_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    async def call_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.loop.run_in_executor(
            self.executor, _call_with_own_connection, fn, args, kwargs
        )

    def submit(self, run_id: uuid.UUID | str, *, wait_seconds: float) -> bool:
        """Start a segment of `run_id` on the loop once a slot is free. Called by the
        django-q task in the worker's main thread; blocks while every slot is taken
        (up to `wait_seconds`). False: not taken (stopping, or no slot in time)."""
        deadline = time.monotonic() + wait_seconds
        while not self._slots.acquire(timeout=0.2):
            if not self.accepting or time.monotonic() > deadline:
                return False
        if not self.accepting:
            self._slots.release()
            return False
        from .executor import segment_execute

        future = asyncio.run_coroutine_threadsafe(segment_execute(run_id, self), self.loop)
        with self._lock:
            self._in_flight.add(future)
            observability.worker_slots(self)
        future.add_done_callback(self._finished)
        return True

    def _finished(self, future: concurrent.futures.Future[str]) -> None:
        with self._lock:
            self._in_flight.discard(future)
            observability.worker_slots(self)
        self._slots.release()
        if not future.cancelled() and future.exception() is not None:
            logger.error("segment crashed", exc_info=future.exception())

    def stop(self, *, drain_seconds: float) -> None:
        """Take no more segments, drain, then hand unfinished runs back to the queue."""
        self.accepting = False
        if self._waker is not None:
            self._waker.cancel()
        pending = list(self._in_flight)
        if pending:
            logger.info("draining %d segment(s) for up to %.0f s", len(pending), drain_seconds)
            concurrent.futures.wait(pending, timeout=drain_seconds)
        if self._in_flight:
            self.releasing = True
            concurrent.futures.wait(list(self._in_flight), timeout=STOP_GRACE_SECONDS)
        # Whatever is still in a step (a slow call) loses its lease now; its commit is
        # then refused by the fence, and the next worker repeats the step with the same
        # idempotency key.
        released = [
            run_id for token, run_id in self.keeper.held.items() if lease_release(run_id, token)
        ]
        if released:
            logger.warning("handed %d unfinished run(s) back to the queue", len(released))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.executor.shutdown(wait=False, cancel_futures=True)


def _call_with_own_connection(
    fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    try:
        return fn(*args, **kwargs)
    finally:
        # A pooled connection goes back to the pool after each call, so the pool, not
        # the number of threads, bounds the connections; a persistent one stays.
        if connection.settings_dict.get("OPTIONS", {}).get("pool"):
            connection.close()


_runtime: WorkerRuntime | None = None


def worker_runtime() -> WorkerRuntime | None:
    """This process's runtime, if it is a worker that runs one."""
    return _runtime


def run_sync(fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """`fn` as an awaitable that runs off the event loop.

    In a worker: on the runtime's bounded thread pool. Elsewhere (inline execution,
    tests): in the caller's thread, as asgiref's `sync_to_async` does, so that code run
    inline sees its caller's transaction.
    """
    runtime = _runtime
    if runtime is not None and runtime.owns_current_loop():

        async def call(*args: Any, **kwargs: Any) -> T:
            return await runtime.call_sync(fn, *args, **kwargs)

        return call
    return sync_to_async(fn)


def segment_should_stop() -> bool:
    """True when the worker is stopping and segments must yield at their next step."""
    runtime = _runtime
    return runtime is not None and runtime.releasing and runtime.owns_current_loop()


# --- the django-q2 worker process ------------------------------------------------------


def _raise_stopping(signum: int, frame: object) -> None:
    raise WorkerStopping()


def runtime_worker(*args: Any, **kwargs: Any) -> None:
    """django-q2's worker loop, with a runtime started for it and drained after it
    (on SIGTERM, on recycle, on the cluster's STOP)."""
    from django_q.worker import worker

    global _runtime
    _runtime = WorkerRuntime(
        concurrency=settings.WORKFLOWS_CONCURRENCY,
        sync_threads=settings.WORKFLOWS_SYNC_THREADS,
        wake_seconds=settings.WORKFLOWS_WAKE_SECONDS,
    )
    signal.signal(signal.SIGTERM, _raise_stopping)
    observability.worker_started(_runtime)
    try:
        worker(*args, **kwargs)
    except WorkerStopping:
        logger.info("worker %s got SIGTERM: draining", os.getpid())
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the drain
        _runtime.stop(drain_seconds=settings.WORKFLOWS_DRAIN_SECONDS)
        connection.close()
        observability.worker_stopped()  # its live gauges go; its spans are sent
