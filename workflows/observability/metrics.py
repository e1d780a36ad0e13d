"""Process-local metrics (Prometheus), and the engine's hooks that only count.

Metrics: where each value comes from, and why

Two sources, because a deployment is several web processes (gunicorn) and several worker
processes (qcluster), and a scrape reaches one web process:

1. **Process-local** values are counted where they happen, in whichever process, with
   prometheus-client's *multiprocess mode*: each process writes its values to memory-mapped
   files in `PROMETHEUS_MULTIPROC_DIR` (set and created by the settings at start-up, before
   prometheus-client is imported), and a scrape merges every process's files. An
   observation is an in-memory write (a few microseconds, no database, no lock shared
   between processes), so the step hot path can afford it:

   - `workflows_step_duration_seconds{kind,status}` (histogram): `step_committed`, when
     a step's row is committed, completed or failed (`WorkflowContext._commit_step`), and
     `wait_recorded`, when a suspend or a long sleep is recorded (status `waiting`). A
     replayed step is not committed again, so it is never observed twice.
   - `workflows_segments_total{workflow,outcome}` (counter): `segment_finished`
     (completed, suspended, failed, released, lease_lost).
   - `workflows_worker_runs_in_flight`, `workflows_worker_free_slots` (gauges, one series
     per worker `pid`, mode `liveall`: a worker's series go when it is marked dead):
     `worker_slots`, when a segment takes or frees a slot (`WorkerRuntime.submit`,
     `_finished`). Only worker processes have them.
   - `workflows_lease_takeovers_total` (counter): `lease_take` took a *running* run whose
     lease had expired (its worker died).
   - `workflows_model_calls_total{provider,model}`,
     `workflows_model_tokens_total{provider,model,type}` (counters): `model_called`, where
     the provider answered (`_AgentLoop._complete`). Only executed calls: a replayed `llm`
     step never reaches the provider, and a call whose step could not commit was still paid.
   - `workflows_model_rate_limited_total{provider,model}` (counter): `model_rate_limited`,
     on every 429 a provider answered.
   - `workflows_step_retries_total{dependency,mode}` (counter): `step_retried`, when a
     step whose policy names a dependency failed transiently and will try again, in the
     worker (`inline`) or after a durable wait (`durable`).

   Multiprocess mode merges the processes of one host (one directory). On a host that
   runs only `qcluster`, run a web process too (bound to localhost is enough) and scrape
   it, or its workers' values are not seen (docs/deploy.md).

2. **Database-backed** values, read when scraped: `collector.py`. `GET /metrics`: `views.py`.
"""

import threading
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from workflows.agents.types import ModelResponse
    from workflows.worker.runtime import WorkerRuntime

# --- process-local metrics --------------------------------------------------------------

# Steps take from a millisecond (a no-op commit) to minutes (a model call waiting out 429s).
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

STEP_DURATION = Histogram(
    "workflows_step_duration_seconds",
    "Duration of executed steps (first attempt to commit, retries included), by kind and status.",
    ["kind", "status"],
    buckets=STEP_BUCKETS,
)
SEGMENTS = Counter(
    "workflows_segments",
    "Run segments executed, by workflow and outcome.",
    ["workflow", "outcome"],
)
LEASE_TAKEOVERS = Counter(
    "workflows_lease_takeovers",
    "Leases taken over: a running run whose worker stopped renewing its lease.",
)
MODEL_CALLS = Counter(
    "workflows_model_calls",
    "Model calls answered by the provider (replayed steps are not calls).",
    ["provider", "model"],
)
MODEL_TOKENS = Counter(
    "workflows_model_tokens",
    "Tokens of answered model calls, by type (prompt, completion).",
    ["provider", "model", "type"],
)
MODEL_RATE_LIMITED = Counter(
    "workflows_model_rate_limited",
    "429 answers from model providers.",
    ["provider", "model"],
)
STEP_RETRIES = Counter(
    "workflows_step_retries",
    "Retries of steps after a transient failure of their dependency, in the worker "
    "(inline) or after a durable wait (durable).",
    ["dependency", "mode"],
)

# One child per label set, kept here: `labels()` takes a lock and builds a tuple.
_step_children: dict[tuple[str, str], Any] = {}


def _step_child(kind: str, status: str) -> Any:
    child = _step_children.get((kind, status))
    if child is None:
        child = _step_children[(kind, status)] = STEP_DURATION.labels(kind, status)
    return child


# The per-worker gauges exist only in worker processes (created by the first
# `worker_slots`), so that web processes report no slots at all rather than zero.
_worker_gauges: tuple[Any, Any] | None = None
_worker_gauges_lock = threading.Lock()


def _gauges() -> tuple[Any, Any]:
    global _worker_gauges
    if _worker_gauges is None:
        with _worker_gauges_lock:
            if _worker_gauges is None:
                _worker_gauges = (
                    Gauge(
                        "workflows_worker_runs_in_flight",
                        "Run segments in flight in a worker process.",
                        registry=None,
                        multiprocess_mode="liveall",
                    ),
                    Gauge(
                        "workflows_worker_free_slots",
                        "Free slots of a worker process (WORKFLOWS_CONCURRENCY minus in flight).",
                        registry=None,
                        multiprocess_mode="liveall",
                    ),
                )
    return _worker_gauges


# --- engine hooks: metrics ----------------------------------------------------------------


def worker_slots(runtime: "WorkerRuntime") -> None:
    """A segment took or freed a slot of this worker process."""
    in_flight, free = _gauges()
    busy = runtime.in_flight
    in_flight.set(busy)
    free.set(runtime.concurrency - busy)


def worker_started(runtime: "WorkerRuntime") -> None:
    """A worker process started its runtime (after the fork)."""
    worker_slots(runtime)



def lease_taken_over() -> None:
    LEASE_TAKEOVERS.inc()


def model_called(provider: str, model: str, response: "ModelResponse") -> "ModelResponse":
    """A provider answered a model call (never called on replay). Returns `response`."""
    MODEL_CALLS.labels(provider, model).inc()
    usage = response.usage
    MODEL_TOKENS.labels(provider, model, "prompt").inc(usage.prompt_tokens)
    MODEL_TOKENS.labels(provider, model, "completion").inc(usage.completion_tokens)
    return response


def model_rate_limited(provider: str, model: str) -> None:
    MODEL_RATE_LIMITED.labels(provider, model).inc()


def step_retried(dependency: str, *, durable: bool) -> None:
    """A step failed transiently at `dependency` and will be attempted again."""
    STEP_RETRIES.labels(dependency, "durable" if durable else "inline").inc()
