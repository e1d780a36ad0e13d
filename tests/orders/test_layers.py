"""The domain stays domain: its reads, writes and Stripe's events know nothing of HTTP.
The doors (`orders/api/`, `orders/admin/`, the commands) turn its errors into answers."""

import ast
from pathlib import Path

import pytest

from tests.support.source import source_parse

ORDERS = Path(__file__).resolve().parents[2] / "orders"
DOMAIN = [
    ORDERS / "errors.py",
    ORDERS / "selectors.py",
    ORDERS / "stripe_webhooks.py",
    *sorted((ORDERS / "services").glob("*.py")),
]
HTTP = ("django.http", "django.shortcuts", "django.views", "rest_framework")


def imported_modules(path: Path) -> set[str]:
    tree = source_parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", DOMAIN, ids=lambda p: str(p.relative_to(ORDERS)))
def test_a_domain_module_imports_nothing_of_http(path):
    http = sorted(name for name in imported_modules(path) if name.startswith(HTTP))
    assert http == [], f"{path.name} imports {http}: the HTTP edge's, not the domain's"


def test_no_orders_module_is_over_500_lines_unless_it_says_why():
    for path in ORDERS.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        text = path.read_text()
        if text.count("\n") > 520:
            docstring = ast.get_docstring(source_parse(text)) or ""
            assert "500 lines" in docstring, f"{path.relative_to(ORDERS)} is long and says not why"
