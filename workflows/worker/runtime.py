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
- one `LeaseKeeper` renews every in-flight lease in one UPDATE, on a thread of its own
  (`workflows-lease`), so that sync steps holding every thread of the pool cannot starve
  it: a sync step longer than the lease keeps its run;
- every `WORKFLOWS_WAKE_SECONDS` it queues the runs whose step's next attempt at a
  dependency is due and hands out the circuits' probes (`services.retry_waits_wake`), so
  a run waiting out an outage wakes within about a second of its time; every
  `WORKFLOWS_REAP_SECONDS` it runs the reaper (`services.runs_reap`), so a dead
  worker's runs and lost tasks are queued again about one lease after the crash;
- on SIGTERM (to the worker, or to the whole process group) or when django-q recycles
  the process, the runtime stops taking segments, lets those in flight finish for up to
  `WORKFLOWS_DRAIN_SECONDS`, then has the rest stop at their next step and hands their
  runs back to the queue (`lease_release`), so another worker continues them at once.

Outside a worker (synchronous mode, tests, `run_execute`) a segment runs on an
`InlineRuntime`. Either way the segment is handed its runtime (`segment_execute(run_id,
runtime)`), which sets it for the segment's code (`segment_runtime`): `run_sync` and
`segment_should_stop` ask the segment's runtime, so inline and worker execution take the
same path and differ only in where sync work runs.

Which code runs on which thread, in a worker process:

- **main thread**: django-q2's worker loop (`runtime_worker` → `django_q.worker.worker`)
  takes a task and calls `tasks.run_execute_task`, which hands the run to
  `WorkerRuntime.submit` (blocking while every slot is taken) and returns. SIGTERM
  raises `WorkerStopping` here; `WorkerRuntime.stop` (the drain, the hand-back of what
  is left) runs here too.
- **`workflows-loop`**: the event loop. Every segment (`executor.segment_execute`): the
  workflow function, its async steps and the agent loop with its model calls; the
  `LeaseKeeper`'s renewals and the wake tick are tasks on it too. Nothing here blocks:
  sync work goes through `run_sync`.
- **`workflows-sync_N`** (the pool): whatever `run_sync` is given: every ORM write of
  the engine (take, step commits, transitions), sync steps (Stripe, SMTP). Each thread
  has its own database connection.
- **`workflows-lease_0`**: the `LeaseKeeper`'s renewal UPDATE only, on its own
  connection, so that it never waits for a free sync thread.

Inline (`run_execute`), asgiref runs the segment's coroutine on a loop of its own, and
`run_sync` brings sync work back to the calling thread, inside its transaction; the
lease is renewed from a thread of asyncio's (`InlineRuntime`), unless the caller is
inside a transaction, where nobody else sees the run.
"""

import asyncio
import concurrent.futures
import contextvars
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from workflows import observability
from workflows.engine.leases import LeaseKeeper, lease_release, lease_renew
from workflows.engine.runtime import SegmentOutcome, SegmentRuntime, loop_resources_close

logger = logging.getLogger(__name__)

T = TypeVar("T")

# After the drain deadline, segments still running get this long to stop at their next
# step boundary before their leases are released from outside.
STOP_GRACE_SECONDS = 5.0


class WorkerStopping(BaseException):
    """Raised in a worker's main thread by SIGTERM: stop taking tasks and drain."""


class WorkerRuntime(SegmentRuntime):
    """The event loop, the sync thread pool and the slots of one worker process."""

    def __init__(
        self, *, concurrency: int, sync_threads: int, wake_seconds: float | None = None
    ) -> None:
        self.concurrency = concurrency
        self.loop = asyncio.new_event_loop()
        self.executor = concurrent.futures.ThreadPoolExecutor(
            sync_threads, thread_name_prefix="workflows-sync"
        )
        # Its own thread: renewals never queue behind sync steps (a slow Stripe call on
        # every pool thread must not cost every in-flight run its lease).
        self._lease_thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="workflows-lease"
        )
        self.keeper = LeaseKeeper(self._renew_leases)
        self._slots = threading.BoundedSemaphore(concurrency)
        self._in_flight: set[concurrent.futures.Future[SegmentOutcome]] = set()
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
        from workflows.engine.services import retry_waits_wake, runs_reap

        reap_every = settings.WORKFLOWS_REAP_SECONDS
        next_reap = time.monotonic() + reap_every
        while self.accepting:
            try:
                await self.call_sync(retry_waits_wake)
            except Exception:
                logger.exception("waking runs whose retry is due failed; trying again")
            if time.monotonic() >= next_reap:
                # Crash recovery within about one lease (the minute's schedule alone
                # adds up to a minute): any number of reapers at once is safe.
                next_reap = time.monotonic() + reap_every
                try:
                    await self.call_sync(runs_reap)
                except Exception:
                    logger.exception("reaping dead workers' runs failed; trying again")
            await asyncio.sleep(seconds)

    async def _renew_leases(self, tokens: list[str]) -> int:
        return await self.loop.run_in_executor(
            self._lease_thread, _call_with_own_connection, lease_renew, (tokens,), {}
        )

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def owns_current_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    async def call_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if not self.owns_current_loop():
            # Code nested in another loop (a step's own `async_to_sync`) cannot wait on
            # this loop's pool: the call stays in its thread.
            return await sync_to_async(fn)(*args, **kwargs)
        return await self.loop.run_in_executor(
            self.executor, _call_with_own_connection, fn, args, kwargs
        )

    def must_stop(self) -> bool:
        return self.releasing and self.owns_current_loop()

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
        from workflows.engine.executor import segment_execute

        future = asyncio.run_coroutine_threadsafe(segment_execute(run_id, self), self.loop)
        with self._lock:
            self._in_flight.add(future)
            observability.worker_slots(self)
        future.add_done_callback(self._finished)
        return True

    def _finished(self, future: concurrent.futures.Future[SegmentOutcome]) -> None:
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
        # Renewing stops first: the leases about to be released must not be kept alive.
        try:
            asyncio.run_coroutine_threadsafe(self.keeper.close(), self.loop).result(
                timeout=STOP_GRACE_SECONDS
            )
        except Exception:
            logger.warning("stopping the lease renewals failed", exc_info=True)
        # Whatever is still in a step (a slow call) loses its lease now; its commit is
        # then refused by the fence, and the next worker repeats the step with the same
        # idempotency key.
        released = [
            run_id for token, run_id in self.keeper.held.items() if lease_release(run_id, token)
        ]
        if released:
            logger.warning("handed %d unfinished run(s) back to the queue", len(released))
        try:  # the model clients and their kept-alive connections
            asyncio.run_coroutine_threadsafe(loop_resources_close(), self.loop).result(
                timeout=STOP_GRACE_SECONDS
            )
        except Exception:
            logger.warning("closing the loop's clients failed", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._lease_thread.shutdown(wait=False, cancel_futures=True)


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


_worker_runtime: contextvars.ContextVar[WorkerRuntime | None] = contextvars.ContextVar(
    "workflows_worker_runtime", default=None
)


def worker_runtime() -> WorkerRuntime | None:
    """The runtime django-q2's worker loop was started with (`runtime_worker`), for the
    task that hands it a run; None where tasks run without one (synchronous mode)."""
    return _worker_runtime.get()


# --- the django-q2 worker process ------------------------------------------------------


def _raise_stopping(signum: int, frame: object) -> None:
    raise WorkerStopping()


def runtime_worker(*args: Any, **kwargs: Any) -> None:
    """django-q2's worker loop, with a runtime started for it and drained after it
    (on SIGTERM, on recycle, on the cluster's STOP). What it assumes of that loop is
    listed in `workflows.worker.cluster` (`DJANGO_Q2_INTERNALS`)."""
    from django_q.worker import worker

    runtime = WorkerRuntime(
        concurrency=settings.WORKFLOWS_CONCURRENCY,
        sync_threads=settings.WORKFLOWS_SYNC_THREADS,
        wake_seconds=settings.WORKFLOWS_WAKE_SECONDS,
    )
    signal.signal(signal.SIGTERM, _raise_stopping)
    observability.worker_started(runtime)
    token = _worker_runtime.set(runtime)  # read by the task django-q2 calls in this thread
    try:
        worker(*args, **kwargs)
    except WorkerStopping:
        logger.info("worker %s got SIGTERM: draining", os.getpid())
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the drain
        runtime.stop(drain_seconds=settings.WORKFLOWS_DRAIN_SECONDS)
        _worker_runtime.reset(token)
        connection.close()
        observability.worker_stopped()  # its live gauges go; its spans are sent
