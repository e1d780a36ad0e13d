"""Workflows for the multi-cluster tests: each step says which process and which
cluster executed it. A `QCluster` runs in its own session, so the process group of a
worker is its cluster's: `os.getpgid(0)` is the cluster's `manage.py qcluster` pid."""

import os
import time

from pydantic import BaseModel

from tests.support.cluster import TEST_WORKFLOW_MODULES
from tests.workflows.sample_workflows import journal_append
from workflows import WorkflowContext, workflow

# What a QCluster that runs these workflows must import.
MODULES = ",".join([*TEST_WORKFLOW_MODULES, __name__])


class ExclusiveWhereInput(BaseModel):
    journal: str
    steps: int = 4
    step_seconds: float = 0.05


class Where(BaseModel):
    step: int
    pid: int  # the worker process
    cluster: int  # its process group: the cluster's main process


class WhereOutput(BaseModel):
    steps: list[Where]


@workflow(id="test.exclusive_where", description="Journals each step, and where it ran.")
async def exclusive_where(ctx: WorkflowContext, payload: ExclusiveWhereInput) -> WhereOutput:
    done = []
    for i in range(payload.steps):

        def work(i: int = i) -> Where:
            journal_append(payload.journal, f"{os.getpid()} enter {i}")
            time.sleep(payload.step_seconds)
            journal_append(payload.journal, f"{os.getpid()} exit {i}")
            return Where(step=i, pid=os.getpid(), cluster=os.getpgid(0))

        done.append(await ctx.step.run(f"step-{i}", work))
    return WhereOutput(steps=done)
