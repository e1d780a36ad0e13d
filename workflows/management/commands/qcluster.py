"""`manage.py qcluster`: django-q2's cluster, with many run segments per worker and a
clean stop.

Two changes to django-q2 1.11, both through its own extension points (the module
globals its `Cluster` and `Sentinel` look up when they start processes):

- each worker process runs `workflows.runtime.runtime_worker`: django-q2's worker loop
  with a `WorkerRuntime` that holds up to `WORKFLOWS_CONCURRENCY` segments in flight and
  drains them when the worker stops or is recycled;
- the sentinel (and the pusher and monitor it forks) ignores SIGTERM, so that a SIGTERM
  to the whole process group (systemd's default `KillMode=control-group`) takes the same
  orderly path as a SIGTERM to the parent alone: the parent stops the sentinel, which
  stops the pusher, hands the tasks its workers will not take back to the queue, and
  waits for the workers to drain. django-q2's own sentinel dies on the spot instead,
  and the parent then hangs in its exit-time join.
"""

import queue
import signal
from typing import Any

from django_q import cluster
from django_q.management.commands.qcluster import Command as DjangoQCommand

from workflows.queue import EXECUTE_TASK, run_enqueue
from workflows.runtime import runtime_worker


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


class Command(DjangoQCommand):
    help = "Starts a django-q2 cluster whose workers each run many workflow segments."

    def handle(self, *args: Any, **options: Any) -> None:
        cluster.worker = runtime_worker
        cluster.Sentinel = DrainingSentinel
        super().handle(*args, **options)
