"""Input and output shapes of the intake API. Validation only: the writes are
`orders.services`, the reads `orders.selectors`."""

from typing import Any

from drf_spectacular.utils import extend_schema_field
from pydantic import ValidationError as PydanticValidationError
from rest_framework import serializers

from orders.models import FraudReview, Order, PaymentStatus, ReviewState
from orders.presenters import order_presented, review_presented
from orders.rules import (
    REVIEW_NOTE_MAX_LENGTH,
    OrderRuleError,
    note_check,
    payload_errors,
)
from orders.schemas import OrderPayload
from orders.selectors import ORDER_STATUS_CHOICES
from workflows.agents.contexts import records_expanded
from workflows.console.presenters import waiting_for_text
from workflows.engine.selectors import run_waiting_for, usage_cost
from workflows.models import RunStatus, StepKind, StepRecord, StepStatus, WaitStatus, WorkflowRun


class _Text(serializers.CharField):
    """A string exactly as sent: no trimming, no checks of DRF's own (blank, NUL). What
    a text may hold is for the order rules to say, the same at every door."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(trim_whitespace=False, allow_blank=True, **kwargs)
        self.validators = []


@extend_schema_field(
    {
        "type": "string",
        "format": "decimal",
        "description": "Digits 0-9 with at most one '.', e.g. \"49.99\" (a JSON number "
        "is read exactly, as written).",
    }
)
class _Number(serializers.Field):
    """A number exactly as sent (text, or a JSON number read as Decimal): whether "1_000"
    or full-width digits spell a number is for the order rules to say, not DRF."""

    def to_internal_value(self, data: Any) -> Any:
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class OrderCreateInputSerializer(serializers.Serializer):
    """The body of an order: shapes only. Its rules are the domain's (`orders.rules`,
    applied by `OrderPayload`); their messages come back as this body's field errors."""

    order_id = _Text()
    customer_id = _Text()
    customer_email = _Text()
    amount = _Number()
    currency = _Text(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        try:
            payload = OrderPayload.model_validate(attrs)
        except PydanticValidationError as exc:
            raise serializers.ValidationError(payload_errors(exc)) from None
        return payload.model_dump()


class ReviewDecisionInputSerializer(serializers.Serializer):
    approved = serializers.BooleanField(required=True)
    note = _Text(
        required=False,
        default="",
        max_length=REVIEW_NOTE_MAX_LENGTH,
        help_text="One line, kept with the decision.",
    )

    def validate_note(self, note: str) -> str:
        try:
            return note_check(note)
        except OrderRuleError as exc:
            raise serializers.ValidationError(str(exc)) from None


class OrderListFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=ORDER_STATUS_CHOICES, required=False)


class ReviewOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField(
        help_text="The review's id: a fraud reviewer decides it at `/api/reviews/{id}/decision/`."
    )
    state = serializers.ChoiceField(choices=ReviewState.choices)
    decided_by = serializers.CharField(allow_null=True)
    decided_at = serializers.DateTimeField(allow_null=True)
    note = serializers.CharField(allow_blank=True)
    deadline = serializers.DateTimeField()


@extend_schema_field(serializers.ChoiceField(choices=ORDER_STATUS_CHOICES))
class _StatusShown(serializers.ReadOnlyField):
    pass


class ReviewListFilterSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=ReviewState.choices, required=False)


class ReviewOrderSerializer(serializers.Serializer):
    order_id = serializers.CharField()
    client = serializers.CharField(
        allow_null=True, help_text="The API client (user) who submitted the order."
    )
    customer_id = serializers.CharField()
    customer_email = serializers.EmailField()
    amount = serializers.CharField(help_text="In major units, with the currency's decimals.")
    currency = serializers.CharField()
    status = _StatusShown(help_text="The order's status, as the order's own body shows it.")
    payment_status = serializers.ChoiceField(
        choices=PaymentStatus.choices,
        help_text="`authorized` while the review is pending: a hold, not a charge.",
    )
    charge_id = serializers.CharField(allow_blank=True)


class RiskSignalsSerializer(serializers.Serializer):
    """`orders.risk.RiskSignals`: the customer's history before this order, in its currency."""

    orders = serializers.IntegerField(help_text="The customer's earlier orders, any status.")
    rejections = serializers.IntegerField()
    refunds = serializers.IntegerField(help_text="Earlier orders refunded in full or in part.")
    disputes = serializers.IntegerField()
    paid_orders = serializers.IntegerField(help_text="Completed, in this order's currency.")
    paid_total = serializers.CharField()
    average = serializers.CharField(allow_null=True, help_text="Null: no completed order.")
    amount_ratio = serializers.CharField(
        allow_null=True, help_text="This amount over the average, e.g. `3.6`."
    )
    customer_24h = serializers.IntegerField(
        help_text="Other orders by this customer in the 24 h up to this one."
    )
    email_24h = serializers.IntegerField(help_text="... and by this email address.")
    email_domain = serializers.CharField()
    domain_first_seen = serializers.DateTimeField(allow_null=True)
    domain_new = serializers.BooleanField(help_text="This order is the domain's first.")
    stripe_risk_level = serializers.CharField(allow_blank=True)
    stripe_risk_score = serializers.IntegerField(allow_null=True)


class ReviewLinksSerializer(serializers.Serializer):
    self = serializers.URLField(help_text="This review in the API.")
    decision = serializers.URLField(help_text="Where to POST the decision.")
    admin = serializers.URLField(help_text="The review's page in the admin (HTML).")


# The schema of a review as reviewers see it; the body is `orders.presenters.review_presented`.
class FraudReviewOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="Global: the same id for every reviewer.")
    state = serializers.ChoiceField(choices=ReviewState.choices)
    opened_at = serializers.DateTimeField()
    deadline = serializers.DateTimeField(
        help_text="Undecided by then, the review expires and the hold is released."
    )
    decided_by = serializers.CharField(allow_null=True)
    decided_at = serializers.DateTimeField(allow_null=True)
    note = serializers.CharField(allow_blank=True)
    agent_summary = serializers.CharField(
        allow_blank=True, help_text="What the order agent said when it sent the order to review."
    )
    order = ReviewOrderSerializer()
    risk = RiskSignalsSerializer(allow_null=True)
    links = ReviewLinksSerializer()

    def to_representation(self, instance: FraudReview) -> dict[str, Any]:
        return review_presented(instance, link=self.context["request"].build_absolute_uri)


class OrderLinksSerializer(serializers.Serializer):
    self = serializers.URLField(help_text="This order in the API.")
    run = serializers.URLField(allow_null=True, help_text="The order's workflow run in the API.")
    trace = serializers.CharField(allow_null=True, help_text="Path of the run's trace page (HTML).")


# The schema of an order's body. The body itself is `orders.presenters.order_presented`
# (also a webhook event's `data`), with links absolute on the request.
class OrderOutputSerializer(serializers.Serializer):
    order_id = serializers.CharField()
    customer_id = serializers.CharField()
    customer_email = serializers.EmailField()
    amount = serializers.CharField(
        read_only=True,
        help_text="In major units, with the currency's decimals: 49.90 USD, 500 JPY.",
    )
    currency = serializers.CharField()
    status = _StatusShown(
        help_text="The order's status; `needs_attention` when its run failed (or was "
        "cancelled) before the order was settled: `retry_run` continues it, "
        "`cancel_order` releases its payment.",
    )
    failure_reason = serializers.CharField(
        allow_blank=True,
        read_only=True,
        help_text="Why the order failed, was rejected or needs attention.",
    )
    waiting_for = serializers.CharField(
        allow_null=True,
        read_only=True,
        help_text="While a dependency of the order is down, what its run waits for, e.g. "
        "`waiting for Stripe (attempt 6, next at 14:02:10 UTC)`; the order stays "
        "`processing` and goes on by itself when the dependency is back. Null otherwise.",
    )
    payment_status = serializers.ChoiceField(
        choices=PaymentStatus.choices,
        help_text="Where the money is: `none` when nothing is charged yet (a new order), "
        "`authorized` a hold (the order awaits review), `canceled` a released hold (never "
        "charged).",
    )
    charge_id = serializers.CharField(allow_blank=True)
    refund_id = serializers.CharField(allow_blank=True)
    refunded_amount = serializers.CharField(
        allow_null=True,
        read_only=True,
        help_text="What was refunded so far, in major units (null: nothing); a partial "
        "refund is less than `amount`.",
    )
    email_sent = serializers.BooleanField(read_only=True)
    fraud_review_required = serializers.BooleanField(
        help_text="Whether the fraud policy sends the order to a reviewer (over its "
        "currency's threshold): known from intake on."
    )
    fraud_approved = serializers.BooleanField(allow_null=True)
    review = ReviewOutputSerializer(allow_null=True, read_only=True)
    run_id = serializers.UUIDField(allow_null=True)
    model_cost_usd = serializers.CharField(
        allow_null=True,
        read_only=True,
        help_text="What the order's model calls cost so far, in US dollars (null: none "
        "priced, e.g. the simulated model).",
    )
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    links = OrderLinksSerializer(read_only=True)

    def to_representation(self, instance: Order) -> dict[str, Any]:
        return order_presented(instance, link=self.context["request"].build_absolute_uri)


class StepOutputSerializer(serializers.Serializer):
    key = serializers.CharField()
    position = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=StepKind.choices)
    status = serializers.ChoiceField(choices=StepStatus.choices)
    input = serializers.JSONField(allow_null=True)
    output = serializers.JSONField(allow_null=True)
    error = serializers.CharField(allow_blank=True)
    attempt = serializers.IntegerField()
    meta = serializers.JSONField()
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField()
    duration_ms = serializers.FloatField()


class WaitOutputSerializer(serializers.Serializer):
    key = serializers.CharField()
    status = serializers.ChoiceField(choices=WaitStatus.choices)
    deadline = serializers.DateTimeField()
    # data = serializers.JSONField(), added by `get_fields`
    resumed_at = serializers.DateTimeField(allow_null=True)
    resumed_by = serializers.CharField(
        source="resumed_by.get_username", allow_null=True, default=None
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        # A field named `data` declared in the class body would shadow `Serializer.data`
        # for the type checker (DRF itself takes declared fields out of the class).
        fields = super().get_fields()
        fields["data"] = serializers.JSONField()
        order = ["key", "status", "deadline", "data", "resumed_at", "resumed_by"]
        return {name: fields[name] for name in order}


class _StepsShown(serializers.ListSerializer):
    """A run's steps as the trace shows them: records kept in the lean format
    (`workflows.agents.transcript`) read back whole, so clients see one format."""

    def get_attribute(self, instance: WorkflowRun) -> list[StepRecord]:
        return records_expanded(instance.steps.all())


class RunOutputSerializer(serializers.Serializer):
    """A run as its trace shows it. The lease and error tracebacks stay internal."""

    id = serializers.UUIDField()
    workflow_id = serializers.CharField()
    status = serializers.ChoiceField(choices=RunStatus.choices)
    input = serializers.JSONField()
    output = serializers.JSONField(allow_null=True)
    error = serializers.CharField(allow_blank=True)
    attempts = serializers.IntegerField()
    usage = serializers.JSONField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    steps = _StepsShown(child=StepOutputSerializer())
    pruned_at = serializers.DateTimeField(
        allow_null=True,
        help_text="When retention deleted the run's steps and waits (its trace), keeping "
        "the run's outcome; null while they are kept.",
    )
    waits = WaitOutputSerializer(many=True)
    model_cost_usd = serializers.SerializerMethodField(
        help_text="What the run's model calls cost, in US dollars (null: none priced)."
    )
    forked_from = serializers.UUIDField(
        source="forked_from_id", allow_null=True, help_text="The run this one continues."
    )
    forked_at_step = serializers.CharField(allow_blank=True)
    forks = serializers.SerializerMethodField(help_text="Runs that continue this one.")
    waiting_for = serializers.SerializerMethodField(
        help_text="While the run waits out an outage of a dependency, what for "
        "(`waiting for Stripe (attempt 6, next at 14:02:10 UTC)`); null otherwise."
    )

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_model_cost_usd(self, run: WorkflowRun) -> str | None:
        cost = usage_cost(run.usage)
        return str(cost) if cost is not None else None

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_forks(self, run: WorkflowRun) -> list[str]:
        return [str(pk) for pk in run.forks.values_list("pk", flat=True)]

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_waiting_for(self, run: WorkflowRun) -> str | None:
        waiting = run_waiting_for(run)
        return waiting_for_text(waiting) if waiting is not None else None


class ErrorOutputSerializer(serializers.Serializer):
    detail = serializers.CharField()
