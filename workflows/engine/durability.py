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
`durable_atomic()`. Its flush also carries every earlier commit, the logs being
sequential. The web, the admin and commands never relax: an accepted order or a
reviewer's decision is on disk before anyone is told.
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
    durable: str  # a commit waits again
    # SQLite chooses a commit's durability before its transaction begins (so `durable` is
    # undone by `relax` after it); PostgreSQL's SET LOCAL, inside it, ends with it.
    before_begin: bool


_STATEMENTS = {
    "sqlite": _Statements("PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL", True),
    "postgresql": _Statements(
        "SET synchronous_commit TO off", "SET LOCAL synchronous_commit TO on", False
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
        return
    if not statements.before_begin:
        with transaction.atomic(using=using):
            _execute(connection, statements.durable)
            yield
        return
    if connection.in_atomic_block:
        raise RuntimeError("durable_atomic() inside a transaction: on SQLite, use it outermost")
    _execute(connection, statements.durable)
    try:
        with transaction.atomic(using=using):
            yield
    finally:
        _execute(connection, statements.relax)
