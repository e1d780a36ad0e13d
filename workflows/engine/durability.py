"""Which commits wait for the disk.

A durable commit returns once its write-ahead log is on disk: on SQLite an fsync, taken
while holding the database's one write lock; on PostgreSQL a WAL flush. A worker commits
a dozen times or more per run (step records, a run's moves, leases, the queue's takes
and acks), and on a 2-core machine waiting for those flushes cost a quarter of the
throughput at zero model latency (bench/README.md, "Eighth pass").

None of those commits needs to survive a power cut: a run that loses its last few
commits replays from an earlier step, exactly as after a worker killed between a step's
effect and its commit, which the engine already covers (leases, idempotency keys derived
from the run and the step). So the processes of a worker cluster commit without waiting
(`commits_relax`, called by `manage.py qcluster`): durable across a crash of the worker,
not of the machine (SQLite's `synchronous=NORMAL` in WAL mode) or of the database server
(PostgreSQL's `synchronous_commit=off`).

What stops an outside effect from happening twice must be on disk before the effect
leaves (the claim of an email, the mark of a charge's first attempt): it commits in
`durable_atomic()`, or, when it is one statement, as a durable `CompiledUpdate` or
`CompiledInsert` (`workflows.engine.compiled_queries`): the same guarantee without a
transaction of its own (on PostgreSQL one round trip to the server instead of four:
BEGIN, SET LOCAL, the write, COMMIT). Either flush also carries
every earlier commit, the logs being sequential. The web, the admin and commands never
relax: an accepted order or a reviewer's decision is on disk before anyone is told.
`WORKFLOWS_WORKER_DURABLE_COMMITS=1` keeps a worker's every commit durable.

Runnable in `manage.py shell` (outside a transaction):

```python
from django.db import connection

from workflows.engine.durability import commits_relax, durable_atomic

commits_relax()
with durable_atomic():  # this commit waits for the disk; the process's others do not
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
```
"""

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created


class _Statements(NamedTuple):
    relax: str  # the connection's commits stop waiting for the disk
    # A commit waits again: SQLite's chosen before its transaction begins (and undone by
    # `relax` after it), PostgreSQL's by SET LOCAL inside it, ending with it.
    durable: str
    # `durable` as a condition of a write, where the statement can say it: true for every
    # row, evaluated for each row the write's WHERE lets through, it makes the transaction
    # that runs the write commit durably, be it the write's own (in autocommit) or an
    # enclosing one. PostgreSQL's `set_config(…, is_local => true)` is SET LOCAL as a
    # function, and its commit reads the setting before the transaction ends. None: the
    # durability is chosen before the transaction begins (SQLite).
    durable_condition: str | None


_STATEMENTS = {
    "sqlite": _Statements("PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL", None),
    "postgresql": _Statements(
        "SET synchronous_commit TO off",
        "SET LOCAL synchronous_commit TO on",
        "set_config('synchronous_commit', 'on', true) IS NOT NULL",
    ),
}
_relaxed = False
# PostgreSQL connections already relaxed: a pooled one is handed out again and again,
# and each `SET` is a round trip.
_relaxed_postgresql: "weakref.WeakSet[Any]" = weakref.WeakSet()


def commits_relax() -> None:
    """From now on this process's commits do not wait for the disk (the module's
    docstring says why that is safe for a worker); `durable_atomic` still does. Call it
    once, in a worker process, before its work starts."""
    global _relaxed
    if settings.WORKFLOWS_WORKER_DURABLE_COMMITS:
        return
    _relaxed = True
    connection_created.connect(_connection_relax, dispatch_uid=__name__)
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None:
            _connection_relax(connection=connection)


def _connection_relax(*, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    statements = _STATEMENTS.get(connection.vendor)
    remembered = connection.vendor == "postgresql"  # a SET is a round trip, a PRAGMA is not
    if statements is None or (remembered and connection.connection in _relaxed_postgresql):
        return
    _execute(connection, statements.relax)
    if remembered:
        _relaxed_postgresql.add(connection.connection)


def _execute(connection: BaseDatabaseWrapper, statement: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement)


@contextmanager
def durable_atomic(using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """`transaction.atomic()` whose commit is on disk when it returns, in a process
    whose other commits are not (`commits_relax`); elsewhere just `transaction.atomic()`.
    On SQLite it must be the outermost transaction: its durability is chosen before it
    begins."""
    connection = connections[using]
    statements = _STATEMENTS.get(connection.vendor)
    if not _relaxed or statements is None:
        with transaction.atomic(using=using):
            yield
    elif statements.durable_condition is not None:
        with transaction.atomic(using=using):
            _execute(connection, statements.durable)
            yield
    else:
        with _durable_before_begin(connection, statements, "durable_atomic()"):
            with transaction.atomic(using=using):
                yield


def durable_condition(vendor: str) -> str | None:
    """The SQL to AND into an UPDATE's WHERE so that the transaction running it commits
    durably, on the engines that can say so in the statement; None on the others. Run
    the UPDATE inside `durable_statement()` on every engine."""
    statements = _STATEMENTS.get(vendor)
    return statements.durable_condition if statements else None


@contextmanager
def durable_statement(using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Around one write that carries `durable_condition` (a durable `CompiledUpdate` or
    `CompiledInsert` writes one): its commit is on disk when it returns, as in
    `durable_atomic`, with no transaction of its own. On SQLite, where the statement
    cannot say it, the choice is made around it, so there it must not run inside a
    transaction."""
    connection = connections[using]
    statements = _STATEMENTS.get(connection.vendor)
    if not _relaxed or statements is None or statements.durable_condition is not None:
        yield
        return
    with _durable_before_begin(connection, statements, "durable_statement()"):
        yield


@contextmanager
def _durable_before_begin(
    connection: BaseDatabaseWrapper, statements: _Statements, what: str
) -> Iterator[None]:
    """SQLite: the next transaction's commit waits for the disk, and only that one."""
    if connection.in_atomic_block:
        raise RuntimeError(f"{what} inside a transaction: on SQLite, use it outermost")
    _execute(connection, statements.durable)
    try:
        yield
    finally:
        _execute(connection, statements.relax)
