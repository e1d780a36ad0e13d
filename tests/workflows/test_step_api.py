"""The step engine's public API: live segments and `replay_check` judge a history with
the same code, and nothing outside the engine core reaches into a context's internals."""

import ast
from pathlib import Path

import pytest
from pydantic import BaseModel

from tests.support.source import source_parse
from workflows import WorkflowContext, run_resume, workflow, workflow_start
from workflows.engine.replay import runs_replay_check
from workflows.models import RunStatus, WorkflowRun

ROOT = Path(__file__).resolve().parents[2]
# The engine core: the only modules that may touch `ctx._*` and `ctx.step._*`.
ENGINE_CORE = {
    "workflows/engine/context.py",
    "workflows/engine/executor.py",
    "workflows/engine/history.py",
}
SCANNED = ("workflows", "orders", "polos_site", "bench", "tests")


# --- one divergence check, live and in replay ---------------------------------------------

DRIFT = {"keys": ["a", "b"], "review": True}
"""The deployed code of `test.step_api.drift`: the steps it asks for, then the review."""


class DriftInput(BaseModel):
    pass


class DriftOutput(BaseModel):
    steps: int


def _noop() -> None:
    return None


@workflow(id="test.step_api.drift", description="Steps, then a review; the code drifts.")
async def drift(ctx: WorkflowContext, payload: DriftInput) -> DriftOutput:
    for key in DRIFT["keys"]:
        await ctx.step.run(str(key), _noop)
    if DRIFT["review"]:
        await ctx.step.suspend("review", timeout=3600)
    return DriftOutput(steps=len(DRIFT["keys"]))


@pytest.fixture
def deployed():
    yield DRIFT
    DRIFT.update(keys=["a", "b"], review=True)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("keys", "review", "position", "expected", "found"),
    [
        (["a", "b2"], True, 1, "b", "b2"),  # a step renamed
        (["a", "x", "b"], True, 1, "b", "x"),  # a step added before a recorded one
        (["b", "a"], True, 0, "a", "b"),  # steps swapped
        (["a"], False, 1, "b", None),  # the code returns before recorded steps
        (["a", "b"], False, 2, "review", None),  # the review, still open, removed
    ],
)
def test_a_divergence_is_reported_alike_by_replay_check_and_by_a_live_segment(
    deployed, queue_capture, keys, review, position, expected, found
):
    run = workflow_start("test.step_api.drift", {})
    assert queue_capture.drain() == ["suspended"]

    deployed.update(keys=keys, review=review)  # the deploy
    [replayed] = runs_replay_check(workflow_id="test.step_api.drift")
    assert not replayed.ok
    assert (replayed.position, replayed.expected, replayed.found) == (position, expected, found)

    run_resume(run.id, "review", {"approved": True})
    assert queue_capture.drain() == ["failed"]
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error == f"NonDeterminismError: {replayed.error}"
    assert f"at position {position}" in replayed.error


@pytest.mark.django_db
def test_unchanged_code_replays_clean_and_the_live_run_completes(deployed, queue_capture):
    run = workflow_start("test.step_api.drift", {})
    assert queue_capture.drain() == ["suspended"]
    assert [r.ok for r in runs_replay_check(workflow_id="test.step_api.drift")] == [True]
    run_resume(run.id, "review", {"approved": True})
    assert queue_capture.drain() == ["completed"]
    assert WorkflowRun.objects.get(pk=run.id).output == {"steps": 2}


# --- no caller outside the engine core uses a context's internals --------------------------


def _is_context(node: ast.expr) -> bool:
    """`ctx`, `….ctx`, `…._ctx` or `….step`: a workflow context or its step API."""
    if isinstance(node, ast.Name):
        return node.id == "ctx"
    return isinstance(node, ast.Attribute) and node.attr in ("ctx", "_ctx", "step")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(source: str) -> list[str]:
    """Each `ctx._x`, `ctx.step._x` (or `getattr(ctx, "_x")`) in `source`, as text."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(source_parse(source)):
        if isinstance(node, ast.Attribute) and _private(node.attr) and _is_context(node.value):
            found.append((node.lineno, ast.unparse(node)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and _is_context(node.args[0])
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            found.append((node.lineno, ast.unparse(node)))
    return [f"{line}: {text}" for line, text in sorted(found)]


def test_the_scan_finds_each_way_of_reaching_into_a_context():
    source = (
        "ctx.step._claim('a')\n"
        "self.ctx.step._run_traced('k', f)\n"
        "ctx._observed_segment = None\n"
        "getattr(ctx, '_observed_segment', None)\n"
        "ctx.step.execute_step('k', f)\n"  # public: fine
        "ctx.history.check_complete()\n"
        "ctx.__class__\n"
        "self._ctx.run_id\n"
    )
    assert private_uses(source) == [
        "1: ctx.step._claim",
        "2: self.ctx.step._run_traced",
        "3: ctx._observed_segment",
        "4: getattr(ctx, '_observed_segment', None)",
    ]


def test_nothing_outside_the_engine_core_uses_a_private_part_of_the_step_api():
    offenders = {}
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative in ENGINE_CORE:
                continue
            if uses := private_uses(path.read_text()):
                offenders[relative] = uses
    assert offenders == {}, (
        "Use the public step API (`ctx.step.execute_step`, `ctx.history`, "
        f"`ctx.observed_segment`) instead: {offenders}"
    )
