"""django-q2's cluster as `manage.py qcluster` runs it: many run segments per worker and a
clean stop.

Two changes to django-q2 1.11, both through its own extension points (the module
globals its `Cluster` and `Sentinel` look up when they start processes):

- each worker process runs `workflows.worker.runtime.runtime_worker`: django-q2's worker loop
  with a `WorkerRuntime` that holds up to `WORKFLOWS_CONCURRENCY` segments in flight and
  drains them when the worker stops or is recycled;
- the sentinel (and the pusher and monitor it forks) ignores SIGTERM, so that a SIGTERM
  to the whole process group (systemd's default `KillMode=control-group`) takes the same
  orderly path as a SIGTERM to the parent alone: the parent stops the sentinel, which
  stops the pusher, hands the tasks its workers will not take back to the queue, and
  waits for the workers to drain. django-q2's own sentinel dies on the spot instead,
  and the parent then hangs in its exit-time join.

What of django-q2 this relies on beyond its documented API is listed once, below, in
`DJANGO_Q2_INTERNALS`; tests/workflows/test_qcluster_internals.py fails when an upgrade
changes any of it.
"""

import queue
import signal
from dataclasses import dataclass
from typing import Any

from django_q import cluster

from workflows.engine.durability import commits_relax
from workflows.engine.queue import EXECUTE_TASK, run_enqueue
from workflows.worker.runtime import runtime_worker

DJANGO_Q2_VERSION = "1.11"
"""The django-q2 series these internals were read from (requirements.txt pins 1.11.1)."""


@dataclass(frozen=True)
class Q2Internal:
    path: str  # dotted path of a django-q2 function or method
    parameters: tuple[str, ...]  # its parameter names, in order
    names: tuple[str, ...]  # globals, attributes or string constants its code must use
    why: str


DJANGO_Q2_INTERNALS = (
    Q2Internal(
        "django_q.cluster.Cluster.start",
        ("self",),
        ("Sentinel",),
        "starts the module global `Sentinel`, looked up then: `cluster.Sentinel = "
        "DrainingSentinel` takes effect",
    ),
    Q2Internal(
        "django_q.cluster.Sentinel.__init__",
        ("self", "stop_event", "start_event", "cluster_id", "broker", "timeout", "start"),
        ("task_queue", "event_out", "pusher", "broker"),
        "DrainingSentinel passes `start=False` to ignore SIGTERM before it starts, and "
        "reads these attributes",
    ),
    Q2Internal("django_q.cluster.Sentinel.start", ("self",), (), "DrainingSentinel calls it"),
    Q2Internal(
        "django_q.cluster.Sentinel.stop",
        ("self",),
        ("event_out", "pusher", "STOP"),
        "DrainingSentinel.stop stops the pusher first, then lets it put its STOP pills",
    ),
    Q2Internal(
        "django_q.cluster.Sentinel.spawn_worker",
        ("self",),
        ("spawn_process", "worker"),
        "spawns the module global `worker`, looked up at each spawn: `cluster.worker = "
        "runtime_worker` reaches every worker process, reincarnated ones too",
    ),
    Q2Internal(
        "django_q.cluster.Sentinel.spawn_process",
        ("self", "target", "args"),
        ("worker", "pool", "timer"),
        "counts a process as a pool worker when its target is that same global",
    ),
    Q2Internal(
        "django_q.worker.worker",
        ("task_queue", "result_queue", "timer", "timeout"),
        ("STOP", "func", "args", "kwargs"),
        "`runtime_worker` passes its arguments through; it calls each task's function in "
        "its own thread (where `runtime_worker` set the runtime for `run_execute_task`), "
        "and SIGTERM's `WorkerStopping` is raised inside its loop",
    ),
    Q2Internal(
        "django_q.pusher.pusher",
        ("task_queue", "event", "broker"),
        ("ack_id",),
        "puts each task in the task queue with its `ack_id`, which the hand-back acknowledges",
    ),
    Q2Internal(
        "django_q.brokers.Broker.acknowledge",
        ("self", "task_id"),
        (),
        "the hand-back acknowledges the tasks it queues again",
    ),
    Q2Internal(
        "django_q.management.commands.qcluster.Command.handle",
        ("self", "args", "options"),
        ("Cluster",),
        "our `Command.handle` calls `cluster_extend` (the globals above), then django-q2's own",
    ),
)


class DrainingSentinel(cluster.Sentinel):
    def __init__(self, *args: Any, start: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, start=False, **kwargs)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the parent's orderly stop ends us
        if start:
            self.start()

    def stop(self) -> None:
        self.event_out.set()  # the pusher stops first, so the task queue stops growing
        while self.pusher.is_alive():
            self.pusher.join(0.1)
        self._hand_back_queued_tasks()
        super().stop()

    def _hand_back_queued_tasks(self) -> None:
        """Tasks pushed to this cluster but not taken by a worker would wait for
        django-q2's `retry` (minutes); queue their runs again instead."""
        while True:
            try:
                task = self.task_queue.get(timeout=0.1)
            except queue.Empty:
                return
            if task == "STOP":
                continue
            if task.get("func") == EXECUTE_TASK:
                run_enqueue(task["args"][0])
                self.broker.acknowledge(task["ack_id"])


def cluster_extend() -> None:
    """Make django-q2's cluster start our worker loop and our sentinel (read by
    `Cluster.start` and `Sentinel.__init__` when they start processes), whose commits
    do not wait for the disk (`workflows.engine.durability`)."""
    commits_relax()
    cluster.worker = runtime_worker
    cluster.Sentinel = DrainingSentinel
