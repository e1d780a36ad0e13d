"""The layers of `workflows/` hold: no import cycle between its modules, the engine
imports none of the worker, console or agents, and no module grows past 500 lines
without its docstring saying why.

Only module-level imports count: an import inside a function runs when it is called,
after every module has loaded, and one under `if TYPE_CHECKING:` never runs, so
neither can make a cycle at import time (and the engine may name a layer above it in a
lazy import only where the test below allows it: nowhere today).
"""

import ast
from pathlib import Path

import pytest

from tests.support.source import source_parse

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "workflows"
ABOVE_ENGINE = ("workflows.worker", "workflows.console", "workflows.agents")
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "migrations" not in p.parts
    }


def _top_level_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit_orelse(child)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            else:
                visit(child)

    def visit_orelse(node: ast.If) -> None:
        for child in node.orelse:
            visit(ast.Module(body=[child], type_ignores=[]))

    visit(tree)
    return found


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The workflows modules `name` imports at module level (a `from pkg import sub`
    of a submodule counts as importing `sub`)."""
    result: set[str] = set()
    for node in _top_level_imports(source_parse(path.read_text())):
        if isinstance(node, ast.Import):
            result.update(a.name for a in node.names if a.name in known)
            continue
        base = node.module or ""
        if node.level:
            package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        for alias in node.names:
            if f"{base}.{alias.name}" in known:
                result.add(f"{base}.{alias.name}")
            elif base in known:
                result.add(base)
    result.discard(name)
    return result


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported_modules(name, path, known) for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in `graph`, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{source} imports {target}"
        for source, targets in graph.items()
        if source.startswith("workflows.engine")
        for target in targets
        if target.startswith(ABOVE_ENGINE)
    )


def oversized(found: dict[str, Path]) -> list[str]:
    """Modules over MAX_LINES whose docstring does not say why (a line starting
    `Over 500 lines because`)."""
    result = []
    for name, path in found.items():
        text = path.read_text()
        if len(text.splitlines()) <= MAX_LINES:
            continue
        docstring = ast.get_docstring(source_parse(text)) or ""
        if "Over 500 lines because" not in docstring:
            result.append(f"{name} ({len(text.splitlines())} lines)")
    return result


def test_no_import_cycle_between_workflows_modules():
    assert find_cycle(import_graph()) is None


def test_the_engine_imports_no_layer_above_it():
    assert layer_violations(import_graph()) == []


def test_no_module_over_500_lines_without_saying_why():
    assert oversized(modules()) == []


def test_the_graph_sees_what_the_engine_imports():
    graph = import_graph()
    # `from workflows.engine import hooks` and `from workflows.engine.leases import ...`
    assert "workflows.engine.hooks" in graph["workflows.engine.retry"]
    assert "workflows.engine.leases" in graph["workflows.engine.executor"]
    assert "workflows.engine.runtime" in graph["workflows.worker.runtime"]


# The checks themselves, on small cases they must catch.


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_an_engine_import_of_the_console_is_a_violation():
    graph = {"workflows.engine.selectors": {"workflows.console.presenters"}}
    assert layer_violations(graph) == [
        "workflows.engine.selectors imports workflows.console.presenters"
    ]


@pytest.mark.parametrize(
    ("source", "counted"),
    [
        ("from workflows.engine import hooks\n", True),
        ("def f():\n    from workflows.engine import hooks\n", False),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from workflows.engine import hooks\n",
            False,
        ),
    ],
)
def test_only_module_level_imports_count(tmp_path, source, counted):
    path = tmp_path / "m.py"
    path.write_text(source)
    found = imported_modules("workflows.engine.m", path, {"workflows.engine.hooks"})
    assert (found == {"workflows.engine.hooks"}) is counted


def test_a_long_module_must_say_why(tmp_path):
    long = tmp_path / "long.py"
    long.write_text('"""A module."""\n' + "x = 1\n" * MAX_LINES)
    assert oversized({"long": long}) == [f"long ({MAX_LINES + 1} lines)"]
    long.write_text('"""A module.\n\nOver 500 lines because it must be."""\n' + "x = 1\n" * 500)
    assert oversized({"long": long}) == []
