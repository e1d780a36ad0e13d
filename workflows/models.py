"""The durable record of every run: the run, its steps, and the waits it suspends on."""

import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.timesince import timeuntil


class RunStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_RUN_STATUSES = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.SUSPENDED)
"""Not finished: a run in these may still move (and must be cancelled before a fork)."""
EXECUTING_RUN_STATUSES = (RunStatus.PENDING, RunStatus.RUNNING)
"""A worker has the run, or will take it: its pages refresh live."""


class StepKind(models.TextChoices):
    STEP = "step"
    LLM = "llm"
    TOOL = "tool"
    AGENT = "agent"
    SUSPEND = "suspend"
    SLEEP = "sleep"


class StepStatus(models.TextChoices):
    COMPLETED = "completed"
    FAILED = "failed"


RETRY_WAIT = "retry"
"""`Wait.kind` of a step waiting for its next attempt at a dependency that is down (see
`context.LiveStepRunner.run_step`): its `data` holds the dependency, the attempts made,
the first failure's time, the last error and whether it waits for the circuit."""


class WaitStatus(models.TextChoices):
    WAITING = "waiting"
    RESUMED = "resumed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class WorkflowRun(models.Model):
    """One execution of a workflow. `lease_*` says which worker may execute it now."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workflow_id = models.CharField(max_length=100)
    input = models.JSONField()
    output = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=RunStatus, default=RunStatus.PENDING)
    error = models.TextField(blank=True)
    error_traceback = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(
        default=0, help_text="How many times a worker has started executing this run."
    )
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    usage = models.JSONField(default=dict, blank=True, help_text="Model token usage, summed.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A fork (`run_fork`) continues its origin from one of its steps under newer code.
    forked_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="forks"
    )
    forked_at_step = models.CharField(max_length=255, blank=True)
    # Set when retention deleted the run's steps and waits (`engine.retention`): the row
    # stays, a tombstone with the run's outcome, usage and times; its trace is gone.
    pruned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["-created_at"], name="run_created_idx"),
            models.Index(fields=["status", "-created_at"], name="run_status_created_idx"),
            models.Index(fields=["workflow_id", "-created_at"], name="run_workflow_created_idx"),
            # The reaper: running runs whose lease expired, pending runs never picked up.
            models.Index(fields=["status", "lease_expires_at"], name="run_status_lease_idx"),
            # Retention walks finished runs oldest first (`engine.retention`).
            models.Index(fields=["finished_at", "id"], name="run_finished_idx"),
        ]
        # Starting a run from the console sends whatever payload the form holds to a
        # workflow (charges, emails): a permission of its own, not just staff status.
        permissions = [
            ("start_run", "Can start workflow runs from the console"),
            ("retry_run", "Can retry failed workflow runs"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_id} {self.id} ({self.status})"


class StepRecord(models.Model):
    """A completed (or finally failed) step: its output is what replay returns."""

    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="steps")
    key = models.CharField(max_length=255)
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=10, choices=StepKind, default=StepKind.STEP)
    status = models.CharField(max_length=10, choices=StepStatus)
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    output_type = models.CharField(
        max_length=255, blank=True, help_text="Import path of the pydantic model of the output."
    )
    error = models.TextField(blank=True)
    error_traceback = models.TextField(blank=True)
    attempt = models.PositiveIntegerField(default=1)
    meta = models.JSONField(default=dict, blank=True, help_text="Model, latency, token usage.")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()

    class Meta:
        ordering = ["run", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "key"], name="step_unique_run_key"),
        ]
        indexes = [models.Index(fields=["run", "position"], name="step_run_position_idx")]

    def __str__(self) -> str:
        return f"{self.key} ({self.status})"

    @property
    def duration_ms(self) -> float:
        return (self.finished_at - self.started_at).total_seconds() * 1000


class Wait(models.Model):
    """A run suspended at `key` until someone resumes it or `deadline` passes."""

    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="waits")
    key = models.CharField(max_length=255)
    position = models.PositiveIntegerField()
    kind = models.CharField(
        max_length=10,
        choices=[
            (StepKind.SUSPEND.value, "suspend"),
            (StepKind.SLEEP.value, "sleep"),
            (RETRY_WAIT, "retry"),
        ],
        default=StepKind.SUSPEND,
    )
    data = models.JSONField(default=dict, blank=True)
    deadline = models.DateTimeField()
    status = models.CharField(max_length=10, choices=WaitStatus, default=WaitStatus.WAITING)
    resume_data = models.JSONField(null=True, blank=True)
    resumed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    resumed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["deadline"]
        constraints = [
            models.UniqueConstraint(fields=["run", "key"], name="wait_unique_run_key"),
        ]
        indexes = [models.Index(fields=["status", "deadline"], name="wait_status_deadline_idx")]

    def __str__(self) -> str:
        return f"{self.run_id}/{self.key} ({self.status})"

    def time_left_text(self, now: datetime | None = None) -> str:
        """ "3 hours, 12 minutes" until the deadline, or "expired" past it."""
        now = now or timezone.now()
        return timeuntil(self.deadline, now, depth=2) if self.deadline > now else "expired"


class AgentContext(models.Model):
    """What every model call of an agent sends besides its conversation (the system
    prompt, the tool schemas, the response format), stored once by its content's hash
    and named by that hash in each model call's step (`agents.transcript`). Shared by
    every run of the same agent version, so retention never deletes it."""

    digest = models.CharField(max_length=64, unique=True)
    content = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.digest[:12]


class ConcurrencySlot(models.Model):
    """One of the N cluster-wide slots of a capped resource (a provider's model), held
    by one process (`holder`, part of its block: `workflows.engine.limits`) and renewed
    with its runs' leases; a holder that died frees its slot when `expires_at` passes."""

    resource = models.CharField(max_length=200)
    number = models.PositiveIntegerField()
    holder = models.CharField(max_length=64, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["resource", "number"], name="slot_unique_number"),
        ]

    def __str__(self) -> str:
        return f"{self.resource} #{self.number} ({self.holder or 'free'})"


class CircuitState(models.TextChoices):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open", "half-open"


class Circuit(models.Model):
    """The circuit of one outside dependency (Stripe, SMTP, a model provider), shared by
    every process: open after a run of consecutive failures, so that steps wait for it
    instead of calling a dead server; one probe at a time decides when it closes
    (`workflows.engine.circuits`)."""

    dependency = models.CharField(max_length=100, unique=True)
    state = models.CharField(max_length=10, choices=CircuitState, default=CircuitState.CLOSED)
    consecutive_failures = models.PositiveIntegerField(default=0)
    opened_at = models.DateTimeField(null=True, blank=True)
    # Open: when the next probe may go, and the pause after it if it fails too.
    probe_at = models.DateTimeField(null=True, blank=True)
    probe_interval = models.FloatField(default=0)
    # Half-open: who holds the probe, and until when (a holder that died gives it up).
    probe_holder = models.CharField(max_length=64, blank=True)
    probe_expires_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.dependency} ({self.state})"
