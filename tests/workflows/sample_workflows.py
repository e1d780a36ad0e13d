"""Workflows the engine tests run, in-process and in qcluster subprocesses.

Step executions are counted in a file named by the payload (`journal`), one line per
execution, so that a count survives a worker killed with SIGKILL.
"""

import os
import time
from pathlib import Path

from pydantic import BaseModel

from workflows import NonRetryableError, RetryPolicy, TransientError, WorkflowContext, workflow

FAST_RETRY = RetryPolicy(max_attempts=4, initial_interval=0.01, backoff=2.0, jitter=0.1)


def journal_append(journal: str | None, line: str) -> None:
    if journal:
        with Path(journal).open("a") as f:
            f.write(line + "\n")


def journal_lines(journal: Path) -> list[str]:
    return journal.read_text().splitlines() if journal.exists() else []


class CountingInput(BaseModel):
    steps: int = 3
    journal: str | None = None
    step_seconds: float = 0.0


class CountingOutput(BaseModel):
    total: int


class Doubled(BaseModel):
    value: int


@workflow(id="test.counting", description="K steps, each journaled when it runs.")
async def counting(ctx: WorkflowContext, payload: CountingInput) -> CountingOutput:
    total = 0
    for i in range(payload.steps):

        def work(i: int = i) -> Doubled:
            journal_append(payload.journal, f"step-{i}")
            if payload.step_seconds:
                time.sleep(payload.step_seconds)
            return Doubled(value=i * 2)

        result = await ctx.step.run(f"step-{i}", work)
        assert isinstance(result, Doubled)  # rebuilt into its model on replay too
        total += result.value
    return CountingOutput(total=total)


class ApprovalInput(BaseModel):
    journal: str | None = None
    timeout: float = 60


class ApprovalOutput(BaseModel):
    approved: bool
    timed_out: bool
    resumed_by: str | None
    prepared: Doubled


@workflow(id="test.approval")
async def approval(ctx: WorkflowContext, payload: ApprovalInput) -> ApprovalOutput:
    def prepare() -> Doubled:
        journal_append(payload.journal, "prepare")
        return Doubled(value=21)

    prepared = await ctx.step.run("prepare", prepare)
    resume_data = await ctx.step.suspend(
        "approval", data={"question": "ship it?"}, timeout=payload.timeout
    )
    await ctx.step.run("after", journal_append, payload.journal, "after")
    return ApprovalOutput(
        approved=resume_data.get("data", {}).get("approved", False),
        timed_out=resume_data["timed_out"],
        resumed_by=resume_data["resumed_by"],
        prepared=prepared,
    )


class FlakyInput(BaseModel):
    journal: str
    failures: int = 2
    permanent: bool = False


# Tests flip this to "fix the cause" of a permanent failure before retrying the run.
BROKEN = {"permanent": True}


@workflow(id="test.flaky")
async def flaky(ctx: WorkflowContext, payload: FlakyInput) -> CountingOutput:
    await ctx.step.run("first", journal_append, payload.journal, "first")

    def call_provider() -> int:
        attempts = sum(
            1 for line in Path(payload.journal).read_text().splitlines() if line == "provider"
        )
        journal_append(payload.journal, "provider")
        if payload.permanent and BROKEN["permanent"]:
            raise NonRetryableError("card declined")
        if attempts < payload.failures:
            raise ConnectionError(f"provider unavailable (attempt {attempts + 1})")
        return attempts + 1

    attempts = await ctx.step.run("provider", call_provider, retry=FAST_RETRY)
    return CountingOutput(total=attempts)


class DependentInput(BaseModel):
    journal: str
    dependency: str = "inventory"
    failure: str = "refused"  # refused | transient | http503 | http400 | declined
    horizon: float | None = None


# Tests switch a dependency down and up: {dependency: True} while it is down.
DEPENDENCIES_DOWN: dict[str, bool] = {}


class _HTTPError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


_FAILURES = {
    "refused": lambda: ConnectionRefusedError(111, "Connection refused"),
    "transient": lambda: TransientError("the service is overloaded"),
    "http503": lambda: _HTTPError(503),
    "http400": lambda: _HTTPError(400),
    "declined": lambda: NonRetryableError("card declined"),
}


@workflow(id="test.dependent", description="One call to a dependency that may be down.")
async def dependent(ctx: WorkflowContext, payload: DependentInput) -> Doubled:
    def call() -> Doubled:
        journal_append(payload.journal, "call")
        if DEPENDENCIES_DOWN.get(payload.dependency):
            raise _FAILURES[payload.failure]()
        return Doubled(value=7)

    policy = RetryPolicy(
        max_attempts=2,
        initial_interval=0.01,
        max_interval=60,
        dependency=payload.dependency,
        horizon=payload.horizon,
    )
    result = await ctx.step.run("call", call, retry=policy)
    await ctx.step.run("after", journal_append, payload.journal, "after")
    return result


class Empty(BaseModel):
    pass


@workflow(id="test.bad_output")
async def bad_output(ctx: WorkflowContext, payload: Empty) -> None:
    await ctx.step.run("returns-a-socket", lambda: object())


@workflow(id="test.memoized_values")
async def memoized_values(ctx: WorkflowContext, payload: ApprovalInput) -> ApprovalOutput:
    first_id = await ctx.step.uuid("id")
    first_time = await ctx.step.now("time")
    await ctx.step.suspend("pause", timeout=payload.timeout)
    journal_append(payload.journal, f"{first_id} {first_time.isoformat()}")
    return ApprovalOutput(
        approved=True, timed_out=False, resumed_by=None, prepared=Doubled(value=0)
    )


class ExclusiveInput(BaseModel):
    journal: str
    steps: int = 4
    step_seconds: float = 0.05


@workflow(id="test.exclusive", description="Journals entering and leaving each step.")
async def exclusive(ctx: WorkflowContext, payload: ExclusiveInput) -> CountingOutput:
    for i in range(payload.steps):

        def work(i: int = i) -> int:
            journal_append(payload.journal, f"{os.getpid()} enter {i}")
            time.sleep(payload.step_seconds)
            journal_append(payload.journal, f"{os.getpid()} exit {i}")
            return i

        await ctx.step.run(f"step-{i}", work)
    return CountingOutput(total=payload.steps)


# --- versioning: one workflow id, two deployments ---------------------------------------

DEPLOYED = {"code": "v1"}
"""Which code of `test.versioned` is "deployed": `v1`; `v2` adds a risk check before the
review unconditionally, `v2-patched` inside `ctx.patched("risk-check")`, and
`v2-deprecated` unconditionally after `ctx.deprecate_patch("risk-check")`."""


class VersionedOutput(BaseModel):
    approved: bool
    risk_checked: bool


@workflow(id="test.versioned", description="A review, with a step added before it in v2.")
async def versioned(ctx: WorkflowContext, payload: ApprovalInput) -> VersionedOutput:
    await ctx.step.run("prepare", journal_append, payload.journal, "prepare")
    code = DEPLOYED["code"]
    if code == "v2-deprecated":
        ctx.deprecate_patch("risk-check")
    risk_check = code in ("v2", "v2-deprecated") or (
        code == "v2-patched" and ctx.patched("risk-check")
    )
    if risk_check:
        await ctx.step.run("risk_check", journal_append, payload.journal, "risk_check")
    decision = await ctx.step.suspend("review", data={"what": "approve?"}, timeout=3600)
    await ctx.step.run("after", journal_append, payload.journal, "after")
    return VersionedOutput(
        approved=decision["data"].get("approved", False), risk_checked=risk_check
    )
