"""Cluster-wide caps on concurrent calls to a shared resource (a provider's model).

With hundreds of runs in flight, a model provider's rate limit is the real ceiling: a
cap on calls in flight, shared by every worker process and machine through the
database, keeps the cluster under it instead of answering 429s. A cap is N rows
(`ConcurrencySlot`); a row has at most one holder, so the cap holds across machines.

A call does not write to the database: each process (one event loop: a worker's
runtime, or an inline execution) holds a *block* of rows under one holder id
(`SlotPool`) and hands them to its calls with an in-process count.

- **grow**: a call that finds its block full takes, in one conditional UPDATE, what the
  process's waiting calls need, up to the cap, from free rows (no holder, or an expired
  one). None free: its calls wait for one of their own to finish or for the block's next
  poll, one statement for all of them, backing off up to `MAX_POLL_SECONDS` (a full cap
  with a hundred calls waiting costs the database one poll, not a hundred).
- **renew**: on the `LeaseKeeper`'s beat, with the runs' leases, for
  `WORKFLOWS_LEASE_SECONDS`. A process that dies stops renewing: its slots are free one
  lease period later, as its runs are.
- **shrink** (fairness): on each beat, the slots its calls did not use since the
  previous beat go back; when the keeper's segments are all done, every unused slot
  goes back; when the loop's owner stops, the whole block does. A process keeps a share
  only while it uses it; one that keeps the whole cap busy without a pause keeps it
  until its load drops (waiting processes poll meanwhile).
- A block not renewed for most of a lease (`TRUSTED_LEASE_FRACTION`; the database was
  unreachable) is treated as lost: calls in flight finish, new ones take slots again.
- Outside a segment (no keeper on this loop) a call takes a block of its own, renewed
  while it runs and given back after.

Runnable in `manage.py shell`:

```python
import asyncio
from workflows.engine.limits import concurrency_slot

async def call() -> str:
    async with concurrency_slot("openai:gpt-4o-mini", limit=50):
        return "answered"  # the model call goes here

asyncio.run(call())
```
"""

import asyncio
import contextlib
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from workflows.engine.leases import lease_duration
from workflows.engine.runtime import loop_resource, run_sync, segment_runtime
from workflows.models import ConcurrencySlot

# A full cap is polled again after a pause that doubles up to this long (and never more
# than a tenth of a lease).
MAX_POLL_SECONDS = 1.0
FIRST_POLL_SECONDS = 0.02
# A block is trusted this long after its last renewal, as a fraction of the lease: the
# rest of the lease is the margin for clock skew between machines and a slow statement.
TRUSTED_LEASE_FRACTION = 0.8

_POOL_KEY = "workflows.engine.limits.SlotPool"


def _longest_pause() -> float:
    return min(MAX_POLL_SECONDS, lease_duration().total_seconds() / 10)


def _jittered(pause: float) -> float:
    # Spread: processes and calls that waited together do not poll together.
    return pause * random.uniform(0.5, 1.5)


def concurrency_limit(resource: str) -> int | None:
    """The configured cap for `provider:model`, else for `provider`, else none."""
    limits: dict[str, int] = settings.WORKFLOWS_MODEL_CONCURRENCY
    provider = resource.split(":", 1)[0]
    return limits.get(resource, limits.get(provider))


def slots_take(
    *, resource: str, limit: int, holder: str, count: int, exclude: Sequence[int] = ()
) -> list[int]:
    """Take up to `count` free slots of `resource` for `holder` for one lease: slots with
    no holder, an expired one, or `holder` itself (a block it let lapse), other than
    `exclude`. Returns the ids of the slots taken (none: the cap is reached)."""
    now = timezone.now()
    free = Q(holder="") | Q(expires_at__lt=now) | Q(holder=holder)
    slots = ConcurrencySlot.objects.filter(resource=resource, number__lt=limit)
    candidates = list(
        slots.filter(free).exclude(pk__in=exclude).values_list("pk", flat=True)[:count]
    )
    if not candidates:
        if slots.count() < limit:  # first use of this cap, or a larger cap
            ConcurrencySlot.objects.bulk_create(
                [ConcurrencySlot(resource=resource, number=n) for n in range(limit)],
                ignore_conflicts=True,
            )
            return slots_take(
                resource=resource, limit=limit, holder=holder, count=count, exclude=exclude
            )
        return []
    # Conditional: a slot another holder took since the SELECT is not taken again.
    ConcurrencySlot.objects.filter(free, pk__in=candidates).update(
        holder=holder, expires_at=now + lease_duration()
    )
    return list(
        ConcurrencySlot.objects.filter(pk__in=candidates, holder=holder).values_list(
            "pk", flat=True
        )
    )


def slots_renew(*, holder: str, keep: Sequence[int], give: Sequence[int] = ()) -> list[int]:
    """Give back `give` and extend `keep` by one lease; returns the slots of `keep`
    still held (one that expired and was taken by another holder is lost)."""
    with transaction.atomic():
        if give:
            slots_give_back(holder=holder, slots=give)
        if not keep:
            return []
        mine = ConcurrencySlot.objects.filter(holder=holder, pk__in=keep)
        if mine.update(expires_at=timezone.now() + lease_duration()) == len(keep):
            return list(keep)
        return list(mine.values_list("pk", flat=True))


def slots_give_back(*, holder: str, slots: Sequence[int] | None = None) -> None:
    """Free `holder`'s `slots` (every one of its slots: None)."""
    mine = ConcurrencySlot.objects.filter(holder=holder)
    if slots is not None:
        mine = mine.filter(pk__in=slots)
    mine.update(holder="", expires_at=None)


@dataclass
class _Block:
    """The slots of one resource a pool holds, and what its calls do with them."""

    held: list[int] = field(default_factory=list)
    in_use: int = 0
    peak: int = 0  # the most in use at once since the last beat
    waiting: int = 0
    renewed_at: float = 0.0  # time.monotonic() just before the oldest row's last renewal
    # After a take found the cap full: no take before `poll_after` (time.monotonic()),
    # and the pause after the next empty one.
    poll_after: float = 0.0
    pause: float = FIRST_POLL_SECONDS
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # grow, renew, shrink
    freed: asyncio.Condition = field(default_factory=asyncio.Condition)


class SlotPool:
    """One holder's blocks of slots, handed to calls on one event loop."""

    def __init__(self) -> None:
        # Host and pid: an operator (and a test) can tell whose slots a row holds.
        self.holder = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._blocks: dict[str, _Block] = {}

    def held(self, resource: str) -> int:
        """How many slots of `resource` this pool holds (trusted or not)."""
        block = self._blocks.get(resource)
        return len(block.held) if block else 0

    def _trusted(self, block: _Block) -> bool:
        horizon = lease_duration().total_seconds() * TRUSTED_LEASE_FRACTION
        return bool(block.held) and time.monotonic() < block.renewed_at + horizon

    def _spare(self, block: _Block) -> bool:
        return self._trusted(block) and block.in_use < len(block.held)

    @asynccontextmanager
    async def slot(self, resource: str, *, limit: int) -> AsyncIterator[None]:
        """Hold one of `limit` cluster-wide slots of `resource` for the body."""
        block = self._blocks.setdefault(resource, _Block())
        await self._acquire(block, resource, limit)
        try:
            yield
        finally:
            block.in_use -= 1
            async with block.freed:
                block.freed.notify()

    async def _acquire(self, block: _Block, resource: str, limit: int) -> None:
        pause = FIRST_POLL_SECONDS
        block.waiting += 1
        try:
            while not self._spare(block):
                if await self._grow(block, resource, limit):
                    continue
                # One of ours finishes, or the block's next poll is due.
                wait = max(block.poll_after - time.monotonic(), _jittered(pause))
                async with block.freed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(block.freed.wait(), wait)
                pause = min(pause * 2, _longest_pause())
        finally:
            block.waiting -= 1
        block.in_use += 1
        block.peak = max(block.peak, block.in_use)

    async def _grow(self, block: _Block, resource: str, limit: int) -> bool:
        """Take what the waiting calls need, up to the cap. False: nothing taken (or
        the cap was full too recently to ask again)."""
        async with block.lock:
            if self._spare(block):
                return True
            if block.held and not self._trusted(block):
                block.held = []  # lapsed: taken again (its own rows included) below
            want = min(limit, block.in_use + block.waiting) - len(block.held)
            if want <= 0 or time.monotonic() < block.poll_after:
                return False
            started = time.monotonic()
            # Cancelled during the statement, a call leaves rows under this holder that
            # the block does not list: the next take counts them as free (its own).
            got = await run_sync(slots_take)(
                resource=resource, limit=limit, holder=self.holder, count=want, exclude=block.held
            )
            if not got:
                block.poll_after = time.monotonic() + _jittered(block.pause)
                block.pause = min(block.pause * 2, _longest_pause())
                return False
            block.poll_after, block.pause = 0.0, FIRST_POLL_SECONDS
            if not block.held:
                block.renewed_at = started
            block.held += got
        async with block.freed:  # the block grew for the other waiting calls too
            block.freed.notify(len(got) - 1)
        return True

    async def heartbeat(self) -> None:
        """Renew the blocks for one lease, giving back what no call used since the
        previous beat."""
        for block in list(self._blocks.values()):
            async with block.lock:
                busy = max(block.peak, block.in_use)
                block.peak = block.in_use
                if not block.held:
                    continue
                keep, give = block.held[:busy], block.held[busy:]
                started = time.monotonic()
                block.held = await run_sync(slots_renew)(holder=self.holder, keep=keep, give=give)
                block.renewed_at = started

    async def idle(self) -> None:
        """Give back every slot no call is using."""
        for block in list(self._blocks.values()):
            async with block.lock:
                give = block.held[block.in_use :]
                if give:
                    block.held = block.held[: block.in_use]
                    await run_sync(slots_give_back)(holder=self.holder, slots=give)

    async def beat_forever(self) -> None:
        """Renew on a beat of one's own (no `LeaseKeeper` runs on this loop)."""
        while True:
            await asyncio.sleep(lease_duration().total_seconds() / 3)
            await self.heartbeat()

    async def close(self) -> None:
        """Give back every slot (the loop's owner is done)."""
        if any(block.held for block in self._blocks.values()):
            await run_sync(slots_give_back)(holder=self.holder)
        self._blocks.clear()

    def __repr__(self) -> str:
        return f"SlotPool({self.holder})"


@asynccontextmanager
async def concurrency_slot(resource: str, *, limit: int | None) -> AsyncIterator[None]:
    """Hold one of `limit` cluster-wide slots of `resource` for the body (no cap: None)."""
    if not limit:
        yield
        return
    runtime = segment_runtime()
    loop = asyncio.get_running_loop()
    if runtime is not None and runtime.keeper.beating_on is loop:
        pool = loop_resource(_POOL_KEY, SlotPool)
        runtime.keeper.renew_also(pool)
        async with pool.slot(resource, limit=limit):
            yield
        return
    own = SlotPool()
    beat = loop.create_task(own.beat_forever())
    try:
        async with own.slot(resource, limit=limit):
            yield
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        await own.close()
