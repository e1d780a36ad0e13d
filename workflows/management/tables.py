"""Tables for the management commands, drawn by `rich`: aligned columns with a dashed
rule under the header, coloured only on a terminal (plain text into a pipe, a file or
a test's buffer), as wide as the terminal there and as wide as they need elsewhere."""

import io
import shutil
from collections.abc import Collection, Sequence

from django.core.management.base import OutputWrapper
from rich.box import Box
from rich.console import Console
from rich.table import Table

# A header rule of dashes, split between the columns; no other lines.
_RULE_UNDER_HEADER = Box("    \n    \n -  \n    \n    \n    \n    \n    \n", ascii=True)
_UNBOUNDED = 10_000


def table_text(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Collection[int] = (),
    terminal: bool = False,
) -> str:
    """The table as text; columns at the indices in `right` are right-aligned."""
    table = Table(box=_RULE_UNDER_HEADER, show_edge=False, pad_edge=False, header_style="bold")
    for index, header in enumerate(headers):
        table.add_column(header, justify="right" if index in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    buffer = io.StringIO()
    width = shutil.get_terminal_size().columns if terminal else _UNBOUNDED
    Console(file=buffer, force_terminal=terminal, width=width, highlight=False).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines())


def table_write(
    stdout: OutputWrapper,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Collection[int] = (),
) -> None:
    """Write the table to a command's output, styled only if that is a terminal."""
    stdout.write(table_text(headers, rows, right=right, terminal=stdout.isatty()))
