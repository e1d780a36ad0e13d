"""`manage.py qcluster` with every worker process under cProfile (all its threads: the
event loop's and the sync threads'), for `--profile` of bench/latency.py and
bench/order_flow.py. Times are each thread's CPU time (`time.thread_time`), not wall
time: waits (the model, locks, the queue) cost nothing, as they cost no CPU.

    BENCH_PROFILE_DIR=/tmp/prof python -m bench.profiled_qcluster

Each worker writes, when it stops, `worker-<pid>.prof` (pstats) and `worker-<pid>.txt`:
its top frames by cumulative and by own time. `summarize(dir)` merges every worker's.
"""

import cProfile
import io
import os
import pstats
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import PROFILE_ENV

TOP = 40


def report(stats: pstats.Stats, title: str) -> str:
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    out.write(f"== {title}: top {TOP} by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(TOP)
    out.write(f"\n== {title}: top {TOP} by own (self) time ==\n")
    stats.sort_stats("tottime").print_stats(TOP)
    return out.getvalue()


def profiled(target: Any, directory: Path) -> Any:
    """`target` (django-q2's worker function) run with one profiler per thread."""

    def worker(*args: Any, **kwargs: Any) -> None:
        profiles: list[cProfile.Profile] = []
        lock = threading.Lock()

        def start_in_thread(*_: Any) -> None:
            profile = cProfile.Profile(time.thread_time)
            with lock:
                profiles.append(profile)
            profile.enable()  # replaces this hook in the new thread

        threading.setprofile(start_in_thread)
        main = cProfile.Profile(time.thread_time)
        profiles.append(main)
        main.enable()
        try:
            target(*args, **kwargs)
        finally:
            main.disable()
            threading.setprofile(None)  # type: ignore[arg-type]
            stats = pstats.Stats(main)
            with lock:
                for profile in profiles[1:]:
                    profile.create_stats()  # threads have ended after the drain
                    stats.add(profile)
            pid = os.getpid()
            stats.dump_stats(directory / f"worker-{pid}.prof")
            (directory / f"worker-{pid}.txt").write_text(report(stats, f"worker {pid}"))

    return worker


def summarize(directory: Path) -> Path | None:
    """All the workers' profiles merged into `workers.txt`; None if there is none."""
    files = sorted(directory.glob("worker-*.prof"))
    if not files:
        return None
    stats = pstats.Stats(str(files[0]))
    for path in files[1:]:
        stats.add(str(path))
    path = directory / "workers.txt"
    path.write_text(report(stats, f"{len(files)} worker processes"))
    return path


def main() -> int:
    directory = Path(os.environ[PROFILE_ENV])
    directory.mkdir(parents=True, exist_ok=True)
    import django

    django.setup()
    from django.core.management import call_command
    from django_q import cluster

    from workflows.management.commands import qcluster
    from workflows.worker.cluster import cluster_extend

    def extend() -> None:
        cluster_extend()
        cluster.worker = profiled(cluster.worker, directory)

    qcluster.cluster_extend = extend  # type: ignore[attr-defined]
    call_command("qcluster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
