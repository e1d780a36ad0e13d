"""The database cache (`polos_site.cache`): Django's behaviour, its `set` one statement,
and the table kept near `MAX_ENTRIES` by a cull every `CULL_EVERY` sets."""

from collections.abc import Iterator

import pytest
from django.core.cache import caches
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from polos_site.cache import DatabaseCache

pytestmark = [pytest.mark.django_db, pytest.mark.db_engine]


def a_cache(**options: int) -> DatabaseCache:
    return DatabaseCache("polos_cache", {"OPTIONS": options})


def rows() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM polos_cache")
        count: int = cursor.fetchone()[0]
    return count


@pytest.fixture(autouse=True)
def empty_table() -> Iterator[None]:
    caches["default"].clear()
    yield
    caches["default"].clear()


def test_the_site_s_cache_is_this_one() -> None:
    assert isinstance(caches["default"], DatabaseCache)


@pytest.mark.django_db(transaction=True)  # outside any transaction, as a request's throttle
def test_set_is_one_statement_and_get_reads_what_it_wrote() -> None:
    cache = a_cache()
    cache.set("history", [3.0, 2.0, 1.0], 60)
    with CaptureQueriesContext(connection) as queries:
        cache.set("history", [4.0, 3.0], 60)
    assert len(queries) == 1, [query["sql"] for query in queries]
    assert cache.get("history") == [4.0, 3.0]
    assert rows() == 1


def test_an_expired_entry_is_gone_and_add_and_touch_keep_django_s_meaning() -> None:
    cache = a_cache()
    cache.set("gone", 1, timeout=0)
    assert cache.get("gone") is None
    cache.set("kept", 1, timeout=None)
    assert cache.add("kept", 2) is False
    assert cache.get("kept") == 1
    assert cache.touch("kept", 60) is True
    assert cache.add("new", 3) is True
    assert cache.get_many(["kept", "new"]) == {"kept": 1, "new": 3}


def test_inside_a_transaction_a_set_is_the_caller_s_to_keep_or_roll_back() -> None:
    cache = a_cache()
    with transaction.atomic():
        cache.set("kept", 1)
    with pytest.raises(RuntimeError), transaction.atomic():
        cache.set("rolled-back", 1)
        raise RuntimeError("the caller fails")
    assert cache.get_many(["kept", "rolled-back"]) == {"kept": 1}


def test_a_failed_set_forgets_quietly_and_leaves_the_caller_s_transaction_usable() -> None:
    cache = DatabaseCache("no_such_table", {})
    with transaction.atomic():
        cache.set("key", 1)  # as Django's: a cache may forget
        assert rows() == 0  # the transaction still answers


def test_the_cull_keeps_the_table_near_max_entries() -> None:
    cache = a_cache(MAX_ENTRIES=10, CULL_FREQUENCY=2, CULL_EVERY=5)
    for number in range(60):
        cache.set(f"key-{number}", number, 60)
        # At most CULL_EVERY sets pass between culls; a cull halves what is over.
        assert rows() <= 10 + 5
    assert cache.get("key-59") == 59


def test_the_cull_removes_expired_entries_first() -> None:
    cache = a_cache(MAX_ENTRIES=3, CULL_EVERY=2)
    for number in range(4):
        cache.set(f"expired-{number}", number, timeout=0)
    cache.set("live", 1, 60)
    cache.set("live-too", 2, 60)  # the sixth set culls: the four expired go
    assert rows() == 2
    assert cache.get_many(["live", "live-too"]) == {"live": 1, "live-too": 2}
