"""Cluster-wide caps on concurrent calls to a shared resource (a provider's model).

With hundreds of runs in flight, a model provider's rate limit is the real ceiling: a
cap on calls in flight, shared by every worker process and machine through the
database, keeps the cluster under it instead of answering 429s. A cap is N rows
(`ConcurrencySlot`); taking a slot is one conditional UPDATE, so two processes can
never hold the same one.

```python
async with concurrency_slot("openai:gpt-4o-mini", limit=50):
    await client.chat.completions.create(...)
```
"""

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from workflows.engine.runtime import run_sync
from workflows.models import ConcurrencySlot

# Waiting for a slot polls the database, backing off up to this long between tries.
MAX_POLL_SECONDS = 1.0


def concurrency_limit(resource: str) -> int | None:
    """The configured cap for `provider:model`, else for `provider`, else none."""
    limits: dict[str, int] = settings.WORKFLOWS_MODEL_CONCURRENCY
    provider = resource.split(":", 1)[0]
    return limits.get(resource, limits.get(provider))


def slot_take(*, resource: str, limit: int, holder: str) -> bool:
    """Take a free slot (or one whose holder died) for `holder`, or return False."""
    now = timezone.now()
    free = Q(holder="") | Q(expires_at__lt=now)
    slots = ConcurrencySlot.objects.filter(resource=resource, number__lt=limit)
    candidate = slots.filter(free).values_list("pk", flat=True).first()
    if candidate is None:
        if slots.count() < limit:  # first use of this cap, or a larger cap
            ConcurrencySlot.objects.bulk_create(
                [ConcurrencySlot(resource=resource, number=n) for n in range(limit)],
                ignore_conflicts=True,
            )
            return slot_take(resource=resource, limit=limit, holder=holder)
        return False
    ttl = timedelta(seconds=settings.WORKFLOWS_SLOT_TTL_SECONDS)
    return bool(
        ConcurrencySlot.objects.filter(free, pk=candidate).update(
            holder=holder, expires_at=now + ttl
        )
    )


def slot_give_back(*, resource: str, holder: str) -> None:
    ConcurrencySlot.objects.filter(resource=resource, holder=holder).update(
        holder="", expires_at=None
    )


@asynccontextmanager
async def concurrency_slot(resource: str, *, limit: int | None) -> AsyncIterator[None]:
    """Hold one of `limit` cluster-wide slots of `resource` for the body (no cap: None)."""
    if not limit:
        yield
        return
    holder = uuid.uuid4().hex
    pause = 0.02
    while not await run_sync(slot_take)(resource=resource, limit=limit, holder=holder):
        await asyncio.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 2, MAX_POLL_SECONDS)
    try:
        yield
    finally:
        await run_sync(slot_give_back)(resource=resource, holder=holder)
