"""Agent contexts in the database, and a run's step records read back in format 1.

A model call's step names its agent's context (system prompt, tool schemas, response
format) by hash (`transcript`, format 2); the context itself is one `AgentContext` row
per distinct content, written by the first call that sends it.
"""

import copy
from collections.abc import Iterable
from typing import Any

from django.db import IntegrityError, transaction

from workflows.agents.transcript import StepPayload, is_lean, transcript_expand
from workflows.engine.compiled_queries import CompiledRead
from workflows.models import AgentContext, StepRecord

_context_by_digest = CompiledRead(AgentContext, "digest")


def agent_context_store(*, digest: str, content: dict[str, Any]) -> None:
    """Store an agent's context under its hash, once (concurrent writers agree). Asked
    by the first live model call of each agent invocation: one SELECT."""
    if _context_by_digest.exists(digest):
        return
    try:
        with transaction.atomic():
            AgentContext.objects.create(digest=digest, content=content)
    except IntegrityError:  # another worker stored the same content first
        pass


def records_expanded(records: Iterable[StepRecord]) -> list[StepRecord]:
    """`records` (one run's, in position order) with every format-2 record's input and
    output rebuilt in format 1, as copies: what the trace page, `manage.py trace` and
    the apps' pages show, for old and new runs alike. One query when any record is in
    format 2 (its contexts), none otherwise."""
    records = list(records)
    lean = [r.input for r in records if is_lean(r.input) and isinstance(r.input, dict)]
    if not lean:
        return records
    digests = {str(data["context"]) for data in lean if data.get("context")}
    contexts = dict(
        AgentContext.objects.filter(digest__in=digests).values_list("digest", "content")
    )
    expanded = transcript_expand(
        (StepPayload(r.key, r.kind, r.input, r.output, r.meta) for r in records), contexts
    )
    result = []
    for record in records:
        if record.key in expanded:
            record = copy.copy(record)
            record.input, record.output = expanded[record.key]
        result.append(record)
    return result
