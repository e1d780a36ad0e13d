"""What one statement sent to PostgreSQL costs this machine's CPU: the client's (psycopg,
its process) and the server's (the backend that ran it), per statement, over many.

    python -m bench.round_trips [--postgres-url URL] [--statements N=5000] [--json]

SQLite runs a statement inside the worker's process; PostgreSQL's costs a round trip
to its server: the driver's send and wait, the kernel's socket and the wake-ups of both
processes, the server's parse, plan and execution. When the server runs on the same
cores as the service (as on this 2-core machine), each one is paid twice, and PostgreSQL's
gap to SQLite follows the statements per order (bench/README.md, "Twelfth pass"). These
figures do not swing with the machine's load as a whole service's do: one client, one
backend, nothing else measured.

Each statement is timed on a table of its own (1,000 rows, in autocommit as a worker's
steps run): `SELECT 1`, a row by its primary key, an UPDATE of one row, and an empty
transaction (BEGIN and COMMIT: two round trips). The client's CPU is this process's
(`getrusage`, user and system apart: the system part is the kernel's socket work); the
server's is the backend's `utime + stime` from /proc, so the server must run on this
machine (the report says so when it does not). The same statements on SQLite (a file in
WAL mode, `synchronous=NORMAL`, as a worker commits) for comparison.
"""

import argparse
import json
import resource
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_POSTGRES_URL,
    BenchError,
    make_logger,
    process_cpu_s,
    render_table,
    run_reporting,
)

PROG = "bench.round_trips"
log = make_logger("round_trips")
TABLE_ROWS = 1000


def _kinds(execute: Callable[..., Any], placeholder: str) -> list[tuple[str, Callable[[], Any]]]:
    """The statements measured, on the `round_trip` table, for a DB-API `execute`."""
    key = f"SELECT id, note FROM round_trip WHERE id = {placeholder}"
    update = f"UPDATE round_trip SET note = {placeholder} WHERE id = {placeholder}"

    def transaction() -> None:
        execute("BEGIN")
        execute("COMMIT")

    return [
        ("SELECT 1", lambda: execute("SELECT 1").fetchone()),
        ("a row by its key", lambda: execute(key, [5]).fetchone()),
        ("an UPDATE of a row", lambda: execute(update, ["y", 5])),
        ("BEGIN + COMMIT", transaction),
    ]


def _timed(
    kinds: list[tuple[str, Callable[[], Any]]], statements: int, server: Callable[[], float | None]
) -> list[dict[str, Any]]:
    results = []
    for name, run in kinds:
        for _ in range(50):  # psycopg prepares a statement from its 5th use
            run()
        server_before, client_before = server(), resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(statements):
            run()
        client_after, server_after = resource.getrusage(resource.RUSAGE_SELF), server()
        per = 1e6 / statements
        server_us = None
        if server_before is not None and server_after is not None:
            server_us = (server_after - server_before) * per
        results.append(
            {
                "statement": name,
                "client_user_us": (client_after.ru_utime - client_before.ru_utime) * per,
                "client_system_us": (client_after.ru_stime - client_before.ru_stime) * per,
                "server_us": server_us,
            }
        )
    return results


def measure_postgresql(url: str, statements: int) -> list[dict[str, Any]]:
    import psycopg

    log(f"PostgreSQL: each statement {statements} times")
    with psycopg.connect(url, autocommit=True) as connection:
        pid = connection.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        connection.execute("CREATE TEMP TABLE round_trip (id int PRIMARY KEY, note text)")
        connection.execute(
            "INSERT INTO round_trip SELECT n, 'x' FROM generate_series(1, %s) AS n", [TABLE_ROWS]
        )
        kinds = _kinds(connection.execute, "%s")
        return _timed(kinds, statements, lambda: process_cpu_s(pid))


def measure_sqlite(statements: int) -> list[dict[str, Any]]:
    """The same statements on SQLite, in this process, as a worker commits them (WAL,
    synchronous=NORMAL: `workflows.engine.durability`)."""
    log(f"SQLite: each statement {statements} times")
    with tempfile.TemporaryDirectory() as directory:
        connection = sqlite3.connect(Path(directory) / "round_trip.sqlite3", isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("CREATE TABLE round_trip (id integer PRIMARY KEY, note text)")
            connection.executemany(
                "INSERT INTO round_trip VALUES (?, 'x')", [(n,) for n in range(1, TABLE_ROWS + 1)]
            )
            return _timed(_kinds(connection.execute, "?"), statements, lambda: None)
        finally:
            connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--statements", type=int, default=5000, help="of each kind")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.statements < 100:
        parser.error("--statements: at least 100")

    def work() -> int:
        try:
            postgresql = measure_postgresql(args.postgres_url, args.statements)
        except Exception as exc:  # the server refused, or is not there
            raise BenchError(f"PostgreSQL at {args.postgres_url}: {exc}") from exc
        sqlite = measure_sqlite(args.statements)
        if args.json:
            print(json.dumps({"postgresql": postgresql, "sqlite": sqlite}))
            return 0

        def total(r: dict[str, Any]) -> float:
            return float(r["client_user_us"] + r["client_system_us"] + (r["server_us"] or 0))

        rows = [
            [
                pg["statement"],
                f"{pg['client_user_us']:.1f}",
                f"{pg['client_system_us']:.1f}",
                "-" if pg["server_us"] is None else f"{pg['server_us']:.1f}",
                f"{total(pg):.1f}",
                f"{total(lite):.1f}",
            ]
            for pg, lite in zip(postgresql, sqlite, strict=True)
        ]
        headers = [
            "statement",
            "PostgreSQL: client user µs",
            "client system µs",
            "server µs",
            "total µs",
            "SQLite: total µs",
        ]
        print(render_table(headers, rows))
        if any(r["server_us"] is None for r in postgresql):
            print("PostgreSQL's server does not run on this machine: its CPU is not measured")
        return 0

    return run_reporting(PROG, log, work)


if __name__ == "__main__":
    sys.exit(main())
