"""The database cache without Redis (`CACHES` in settings): Django's, its `set` one
statement.

The API throttles read and write each client's request history on every request.
Django's `DatabaseCache.set` counts the whole table (to cull it), then reads the key and
updates or inserts it in a transaction: five statements, each a round trip to
PostgreSQL's server, for what one upsert says. Here `set` is that upsert, and the
cull (expired entries first, then Django's `MAX_ENTRIES` and `CULL_FREQUENCY`) runs on
one `set` in `CULL_EVERY` of each process instead of counting the table every time.
`add`, `touch`, reads and deletes are Django's.
"""

import base64
import itertools
import pickle
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.db import DatabaseCache as DjangoDatabaseCache
from django.db import DatabaseError, connections, router, transaction
from django.utils.timezone import now as tz_now

# Engines whose SQL has `INSERT … ON CONFLICT … DO UPDATE`; any other gets Django's `set`.
_UPSERT_VENDORS = frozenset({"sqlite", "postgresql"})


class DatabaseCache(DjangoDatabaseCache):
    """`django.core.cache.backends.db.DatabaseCache` whose `set` is one upsert.

    OPTIONS: Django's (`MAX_ENTRIES`, `CULL_FREQUENCY`), and `CULL_EVERY` (default 100):
    how many of a process's `set`s pass between two culls. The table may outgrow
    `MAX_ENTRIES` by that many rows per process in between.
    """

    def __init__(self, table: str, params: dict[str, Any]) -> None:
        super().__init__(table, params)
        options = params.get("OPTIONS", {})
        self._cull_every = max(1, int(options.get("CULL_EVERY", 100)))
        self._sets = itertools.count(1)  # next() is atomic under the GIL: thread-safe

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        db = router.db_for_write(self.cache_model_class)
        connection = connections[db]
        if connection.vendor not in _UPSERT_VENDORS:
            super().set(key, value, timeout, version)
            return
        key = self.make_and_validate_key(key, version=version)
        timeout = self.get_backend_timeout(timeout)
        expires = (
            datetime.max
            if timeout is None
            else datetime.fromtimestamp(timeout, tz=UTC if settings.USE_TZ else None)
        ).replace(microsecond=0)
        encoded = base64.b64encode(pickle.dumps(value, self.pickle_protocol)).decode("latin1")
        quote = connection.ops.quote_name
        table = quote(self._table)
        upsert = (
            f"INSERT INTO {table} ({quote('cache_key')}, {quote('value')}, {quote('expires')}) "
            f"VALUES (%s, %s, %s) ON CONFLICT ({quote('cache_key')}) DO UPDATE SET "
            f"{quote('value')} = EXCLUDED.{quote('value')}, "
            f"{quote('expires')} = EXCLUDED.{quote('expires')}"
        )
        parameters = [key, encoded, connection.ops.adapt_datetimefield_value(expires)]
        # As Django's `set`: a failure is not the caller's (a cache may forget), so inside
        # the caller's transaction it stays in a savepoint of its own; outside, the
        # statement is its own transaction (no BEGIN and COMMIT round trips).
        own_savepoint = (
            transaction.atomic(using=db) if connection.in_atomic_block else nullcontext()
        )
        try:
            with own_savepoint:
                with connection.cursor() as cursor:
                    if next(self._sets) % self._cull_every == 0:
                        self._cull_if_full(db, cursor)
                    cursor.execute(upsert, parameters)
        except DatabaseError:
            pass

    def _cull_if_full(self, db: str, cursor: Any) -> None:
        cursor.execute(f"SELECT COUNT(*) FROM {connections[db].ops.quote_name(self._table)}")
        count = cursor.fetchone()[0]
        if count > self._max_entries:
            self._cull(db, cursor, tz_now().replace(microsecond=0), count)
