"""Parsing the project's own source, for the tests that check its structure."""

import ast
import gc


def source_parse(text: str, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse`, with the garbage collector paused: CPython 3.11 before 3.11.8 can fail
    a parse with "SystemError: AST constructor recursion depth mismatch" when a collection
    runs finalizers while the tree's objects are built (python/cpython#106905), which the
    full suite, with its event loops and clients left to the collector, once did."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(text, filename=filename)
    finally:
        if enabled:
            gc.enable()
