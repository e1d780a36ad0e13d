"""The django-q2 internals our `qcluster` relies on are still there, as it expects them.

An upgrade of django-q2 fails here, naming what changed, instead of in a worker that
no longer drains or a cluster whose workers never start a runtime."""

import importlib
import importlib.metadata
import inspect
import types
from typing import Any

import pytest

from workflows.worker.cluster import DJANGO_Q2_INTERNALS, DJANGO_Q2_VERSION, Q2Internal


def resolve(path: str) -> Any:
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            target: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            target = getattr(target, attribute)
        return target
    raise ImportError(path)


def names_used(code: types.CodeType) -> set[str]:
    """The globals, attributes and string constants a function's code uses (nested
    code objects, such as comprehensions, included)."""
    used = set(code.co_names) | {c for c in code.co_consts if isinstance(c, str)}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            used |= names_used(const)
    return used


def test_the_installed_django_q2_is_the_series_they_were_read_from():
    installed = importlib.metadata.version("django-q2")
    assert installed.startswith(f"{DJANGO_Q2_VERSION}."), (
        f"django-q2 {installed} is installed; DJANGO_Q2_INTERNALS were read from "
        f"{DJANGO_Q2_VERSION}.x: check each against the new version, then update it"
    )


@pytest.mark.parametrize("internal", DJANGO_Q2_INTERNALS, ids=lambda i: i.path)
def test_each_internal_is_there_with_its_signature_and_names(internal: Q2Internal):
    function = resolve(internal.path)
    assert tuple(inspect.signature(function).parameters) == internal.parameters, internal.why
    missing = set(internal.names) - names_used(function.__code__)
    assert not missing, f"{internal.path} no longer uses {sorted(missing)}: {internal.why}"


def test_a_changed_internal_is_caught():
    def worker(task_queue, result_queue, timer):  # one parameter less, no STOP pill
        return task_queue, result_queue, timer

    changed = Q2Internal("x", ("task_queue", "result_queue", "timer", "timeout"), ("STOP",), "")
    assert tuple(inspect.signature(worker).parameters) != changed.parameters
    assert set(changed.names) - names_used(worker.__code__) == {"STOP"}
