"""The cluster-wide model-call cap (`workflows.engine.limits`): two slot pools with
different holder ids stand for two processes sharing one database."""

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from workflows.engine.leases import LeaseKeeper
from workflows.engine.limits import SlotPool, concurrency_slot, slots_take
from workflows.models import ConcurrencySlot

# The cap is conditional UPDATEs on shared rows: its rules depend on the engine's locking.
pytestmark = [pytest.mark.django_db, pytest.mark.db_engine]

RESOURCE = "openai:gpt-test"
LEASE = 1.0  # seconds: room for a loaded machine's scheduling in the timing windows


@pytest.fixture
def short_lease(settings):
    settings.WORKFLOWS_LEASE_SECONDS = LEASE


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run on a loop of its own, with sync work in this thread (the test's transaction)."""

    async def main() -> Any:
        return await coro_fn()

    return async_to_sync(main)()


def holders() -> dict[str, int]:
    """Slots held (unexpired), by holder."""
    counts: dict[str, int] = {}
    held = ConcurrencySlot.objects.filter(resource=RESOURCE, expires_at__gt=timezone.now())
    for holder in held.values_list("holder", flat=True):
        if holder:
            counts[holder] = counts.get(holder, 0) + 1
    return counts


async def aholders() -> dict[str, int]:
    return await sync_to_async(holders)()


async def enter(pool: SlotPool, limit: int, release: asyncio.Event) -> asyncio.Task[None]:
    """A call that holds one of `pool`'s slots until `release` is set; returns once held."""
    entered = asyncio.Event()

    async def call() -> None:
        async with pool.slot(RESOURCE, limit=limit):
            entered.set()
            await release.wait()

    task = asyncio.get_running_loop().create_task(call())
    await asyncio.wait_for(entered.wait(), 2)
    return task


async def granted_within(pool: SlotPool, limit: int, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            async with pool.slot(RESOURCE, limit=limit):
                return True
    except TimeoutError:
        return False


def test_the_cap_holds_across_two_holders_calling_at_once(short_lease):
    """Two processes' calls, with their blocks growing, renewed and shrinking under
    them: never more than the cap in flight, and both get calls through."""
    limit = 3
    pools = [SlotPool(), SlotPool()]
    in_flight = peak = 0
    calls_by_pool = [0, 0]

    async def call(index: int) -> None:
        nonlocal in_flight, peak
        async with pools[index].slot(RESOURCE, limit=limit):
            in_flight += 1
            peak = max(peak, in_flight)
            calls_by_pool[index] += 1
            await asyncio.sleep(random.uniform(0.001, 0.01))
            in_flight -= 1

    async def beats(pool: SlotPool, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(0.02)
            await pool.heartbeat()

    async def main() -> None:
        stop = asyncio.Event()
        keepers = [asyncio.create_task(beats(pool, stop)) for pool in pools]
        await asyncio.gather(*(call(i % 2) for i in range(40)))
        stop.set()
        await asyncio.gather(*keepers)
        await asyncio.gather(*(pool.close() for pool in pools))

    run(main)
    assert peak == limit  # the cap, reached and never passed
    assert min(calls_by_pool) > 0
    assert holders() == {}  # closed: every slot given back


def test_a_full_cap_held_elsewhere_is_not_granted(short_lease):
    async def main() -> None:
        first, second = SlotPool(), SlotPool()
        release = asyncio.Event()
        calls = [await enter(first, 2, release) for _ in range(2)]
        assert not await granted_within(second, 2, 0.1)
        release.set()
        await asyncio.gather(*calls)
        await first.close()
        assert await granted_within(second, 2, 0.5)
        await second.close()

    run(main)


def test_calls_waiting_on_a_full_cap_poll_the_database_together(short_lease, monkeypatch):
    """A hundred calls waiting on a full cap must not each ask the database for a slot
    every few milliseconds: that polling was a quarter of a loaded worker's CPU. The
    block polls once per pause for all of them, and hands a grown block to all."""
    polls = 0

    def counted_take(**kwargs: Any) -> list[int]:
        nonlocal polls
        polls += 1
        return slots_take(**kwargs)

    monkeypatch.setattr("workflows.engine.limits.slots_take", counted_take)
    waiting_calls = 40

    async def main() -> None:
        first, second = SlotPool(), SlotPool()
        release, done = asyncio.Event(), asyncio.Event()
        held = [await enter(first, 2, release) for _ in range(2)]
        granted = 0

        async def call() -> None:
            nonlocal granted
            async with second.slot(RESOURCE, limit=2):
                granted += 1
                await done.wait()

        waiting = [asyncio.create_task(call()) for _ in range(waiting_calls)]
        await asyncio.sleep(LEASE / 2)  # the cap stays full meanwhile
        assert granted == 0
        # Each call polling on its own backoff polled 3-4 times by now (139 polls in
        # all); the block's one backoff, capped at a tenth of a lease, at most 13 times.
        assert polls < waiting_calls / 2
        release.set()
        await asyncio.gather(*held)
        await first.close()
        deadline = time.monotonic() + LEASE
        while granted < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert granted == 2  # the freed cap, to two of the waiting calls at once
        done.set()
        await asyncio.gather(*waiting)
        await second.close()

    run(main)


def test_calls_within_a_block_write_nothing_and_idle_slots_go_back_on_the_beat(short_lease):
    pool = SlotPool()

    async def calls(count: int) -> None:
        for _ in range(count):
            async with pool.slot(RESOURCE, limit=5):
                pass

    run(lambda: calls(1))  # takes the block
    with CaptureQueriesContext(connection) as queries:
        run(lambda: calls(20))
    assert len(queries) == 0
    assert pool.held(RESOURCE) == 1
    run(pool.heartbeat)  # used since the last beat: kept, renewed
    assert holders() == {pool.holder: 1}
    run(pool.heartbeat)  # unused for a whole beat: given back
    assert holders() == {}
    assert pool.held(RESOURCE) == 0


def test_a_dead_holders_slots_are_free_one_lease_after_its_last_renewal(short_lease):
    async def main() -> None:
        dead, live = SlotPool(), SlotPool()
        release = asyncio.Event()
        calls = [await enter(dead, 2, release) for _ in range(2)]
        renewing = time.monotonic()
        await dead.heartbeat()  # its last renewal: then it "dies" (no beat, no close)
        renewed = time.monotonic()
        assert not await granted_within(live, 2, LEASE * 0.7)
        assert await granted_within(live, 2, LEASE * 1.5)
        granted = time.monotonic()
        assert granted - renewing >= LEASE * 0.95  # not before its lease ran out
        assert granted - renewed <= LEASE * 1.6  # and soon after
        assert await aholders() == {live.holder: 1}
        release.set()
        await asyncio.gather(*calls)

    run(main)


def test_a_renewed_block_is_kept_past_its_lease(short_lease):
    async def main() -> None:
        holder, other = SlotPool(), SlotPool()
        release = asyncio.Event()
        call = await enter(holder, 1, release)

        async def beats() -> None:
            while not release.is_set():
                await asyncio.sleep(LEASE / 3)
                await holder.heartbeat()

        keeper = asyncio.create_task(beats())
        assert not await granted_within(other, 1, LEASE * 2)
        release.set()
        await asyncio.gather(call, keeper)
        assert await aholders() == {holder.holder: 1}

    run(main)


def test_slots_take_takes_only_free_slots_up_to_the_cap(short_lease):
    first = slots_take(resource=RESOURCE, limit=3, holder="a", count=2)
    assert len(first) == 2
    assert len(slots_take(resource=RESOURCE, limit=3, holder="b", count=5)) == 1
    assert slots_take(resource=RESOURCE, limit=3, holder="c", count=1) == []
    assert holders() == {"a": 2, "b": 1}


def test_a_call_outside_a_segment_takes_a_block_of_its_own_and_gives_it_back(short_lease):
    async def main() -> None:
        async with concurrency_slot(RESOURCE, limit=1):
            assert len(await aholders()) == 1
            await asyncio.sleep(LEASE * 1.5)  # outlives its first lease: renewed meanwhile
            assert len(await aholders()) == 1
            assert not await granted_within(SlotPool(), 1, 0.05)
        assert await aholders() == {}

    run(main)


def test_the_lease_keeper_renews_the_block_and_gives_back_what_idles(short_lease):
    """Wired to a `LeaseKeeper`: the block lives as long as the segments' leases are
    renewed, and goes back (not just expires) on the beat after the last segment ends."""

    async def named_holder(pool: SlotPool) -> bool:
        mine = ConcurrencySlot.objects.filter(holder=pool.holder)
        return await sync_to_async(mine.exists)()

    async def main() -> None:
        keeper, pool = LeaseKeeper(), SlotPool()
        keeper.renew_also(pool)
        release = asyncio.Event()
        with keeper.holding(uuid.uuid4(), "a-segment's-token"):
            call = await enter(pool, 1, release)
            assert not await granted_within(SlotPool(), 1, LEASE * 2)
            release.set()
            await call
        # An expired block keeps its holder's name: only a give-back clears it, so the
        # bound can be generous for a loaded machine without passing a block left to expire.
        deadline = time.monotonic() + 10 * LEASE
        while await named_holder(pool) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not await named_holder(pool)  # given back, not left to expire
        await keeper.close()

    run(main)


def test_a_call_cancelled_while_its_block_grows_leaves_the_slot_to_the_block(short_lease):
    async def main() -> None:
        pool = SlotPool()
        waiting = asyncio.create_task(granted_within(pool, 1, 5))
        await asyncio.sleep(0)  # into the take
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert await granted_within(pool, 1, 0.5)  # its slot, not leaked to expiry
        await pool.close()

    run(main)
    assert holders() == {}
