"""Executing one segment of a run: from its start or resume point until it completes,
fails or suspends. Called by the django-q2 task; safe to call twice at once."""

import logging
import threading
import traceback
import uuid
from typing import Any

from asgiref.sync import async_to_sync
from django.db import connection
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from .context import WorkflowContext, lease_duration
from .errors import LeaseLostError, Suspended, UnknownWorkflowError
from .models import RunStatus, StepRecord, StepStatus, WorkflowRun
from .registry import workflow_get

logger = logging.getLogger(__name__)


def lease_acquire(run_id: str | uuid.UUID, token: str) -> bool:
    """Take the run's lease with one conditional UPDATE: only a pending run, or a running
    one whose lease has expired, can be taken. A duplicate delivery loses here."""
    now = timezone.now()
    return bool(
        WorkflowRun.objects.filter(pk=run_id)
        .filter(Q(status=RunStatus.PENDING) | Q(status=RunStatus.RUNNING, lease_expires_at__lt=now))
        .update(
            status=RunStatus.RUNNING,
            lease_owner=token,
            lease_expires_at=now + lease_duration(),
            attempts=F("attempts") + 1,
            started_at=Coalesce(F("started_at"), now),
            updated_at=now,
        )
    )


class _LeaseHeartbeat(threading.Thread):
    """Renews the lease while one long step (a slow model call) runs; step commits renew
    it too. Uses its own database connection, closed when it stops."""

    def __init__(self, run_id: uuid.UUID, token: str) -> None:
        super().__init__(name=f"lease-{run_id}", daemon=True)
        self.run_id = run_id
        self.token = token
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = lease_duration().total_seconds() / 3
        try:
            while not self.stopped.wait(interval):
                WorkflowRun.objects.filter(
                    pk=self.run_id, lease_owner=self.token, status=RunStatus.RUNNING
                ).update(lease_expires_at=timezone.now() + lease_duration())
        except Exception:
            logger.exception("lease heartbeat for run %s failed", self.run_id)
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


def run_execute(run_id: str | uuid.UUID) -> str:
    """Execute a run's next segment. Returns what happened, for logs and tests."""
    token = uuid.uuid4().hex
    if not lease_acquire(run_id, token):
        logger.info("run %s: not pending or leased elsewhere; nothing to do", run_id)
        return "skipped"
    run = WorkflowRun.objects.get(pk=run_id)
    history = list(
        StepRecord.objects.filter(run=run, status=StepStatus.COMPLETED).order_by("position")
    )
    try:
        definition = workflow_get(run.workflow_id)
    except UnknownWorkflowError as exc:
        _finish_failed(run, token, exc, usage={})
        return "failed"

    ctx = WorkflowContext(run=run, definition=definition, history=history, lease_token=token)
    heartbeat = _LeaseHeartbeat(run.id, token)
    heartbeat.start()
    try:
        payload = definition.input_model.model_validate(run.input)
        result = async_to_sync(definition.fn)(ctx, payload)
        output = _dump_output(definition.output_model, result)
    except Suspended:
        return "suspended"
    except LeaseLostError:
        logger.warning("run %s: lease lost (cancelled or taken over); stopping", run_id)
        return "lease_lost"
    except Exception as exc:
        logger.info("run %s failed: %s", run_id, exc)
        _finish_failed(run, token, exc, usage=ctx.usage)
        return "failed"
    finally:
        heartbeat.stop()

    finished = WorkflowRun.objects.filter(
        pk=run.id, lease_owner=token, status=RunStatus.RUNNING
    ).update(
        status=RunStatus.COMPLETED,
        output=output,
        usage=ctx.usage,
        lease_owner="",
        lease_expires_at=None,
        finished_at=timezone.now(),
        updated_at=timezone.now(),
    )
    return "completed" if finished else "lease_lost"


def _dump_output(model: Any, result: Any) -> Any:
    if model is not None:
        return model.model_validate(result).model_dump(mode="json")
    return None


def _finish_failed(run: WorkflowRun, token: str, exc: BaseException, usage: dict) -> None:
    now = timezone.now()
    WorkflowRun.objects.filter(pk=run.id, lease_owner=token).update(
        status=RunStatus.FAILED,
        error=f"{type(exc).__name__}: {exc}",
        error_traceback="".join(traceback.format_exception(exc)),
        usage=usage,
        lease_owner="",
        lease_expires_at=None,
        finished_at=now,
        updated_at=now,
    )
