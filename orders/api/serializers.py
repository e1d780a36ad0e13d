"""Input and output shapes of the intake API. Validation only: the writes are
`orders.services`, the reads `orders.selectors`."""

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from pydantic import ValidationError as PydanticValidationError
from rest_framework import serializers

from orders.models import Order, OrderStatus, ReviewState
from orders.schemas import OrderPayload
from orders.selectors import order_email_sent, order_review_info
from workflows.models import RunStatus, StepKind, StepStatus, WaitStatus

ORDER_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
IDEMPOTENCY_KEY_MAX_LENGTH = 255


class OrderCreateInputSerializer(serializers.Serializer):
    order_id = serializers.RegexField(
        ORDER_ID_PATTERN,
        max_length=64,
        error_messages={
            "invalid": "Use 1 to 64 characters among letters, digits, '_', '.', ':' and '-'."
        },
    )
    customer_id = serializers.CharField(max_length=255)
    customer_email = serializers.EmailField(max_length=254)
    amount = serializers.DecimalField(max_digits=12, decimal_places=2)
    currency = serializers.CharField(max_length=3, default="usd")

    def validate_amount(self, value: Decimal) -> Decimal:
        if value <= 0:
            raise serializers.ValidationError("The amount must be greater than 0.")
        maximum = Decimal(settings.ORDER_MAX_AMOUNT)
        if value > maximum:
            raise serializers.ValidationError(f"The amount must not be more than {maximum}.")
        return value

    def validate_currency(self, value: str) -> str:
        currency = value.lower()
        allowed = [c.lower() for c in settings.ORDER_CURRENCIES]
        if currency not in allowed:
            raise serializers.ValidationError(
                f"Unknown currency {value!r}; use one of {', '.join(allowed)}."
            )
        return currency

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # The workflow's own input model has the last word (its e-mail check is stricter
        # than Django's): refuse here, as field errors, what it would refuse later.
        try:
            OrderPayload.model_validate(attrs)
        except PydanticValidationError as exc:
            errors: dict[str, list[str]] = {}
            for error in exc.errors(include_url=False, include_input=False):
                field = str(error["loc"][0]) if error["loc"] else "non_field_errors"
                errors.setdefault(field, []).append(error["msg"])
            raise serializers.ValidationError(errors) from None
        return attrs


class ReviewDecisionInputSerializer(serializers.Serializer):
    approved = serializers.BooleanField(required=True)
    note = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")


class OrderListFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=OrderStatus.choices, required=False)


class ReviewOutputSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=ReviewState.choices)
    decided_by = serializers.CharField(allow_null=True)
    decided_at = serializers.DateTimeField(allow_null=True)
    note = serializers.CharField(allow_blank=True)
    deadline = serializers.DateTimeField()


class OrderLinksSerializer(serializers.Serializer):
    self = serializers.URLField(help_text="This order in the API.")
    run = serializers.URLField(allow_null=True, help_text="The order's workflow run in the API.")
    trace = serializers.CharField(allow_null=True, help_text="Path of the run's trace page (HTML).")


class OrderOutputSerializer(serializers.Serializer):
    order_id = serializers.CharField()
    customer_id = serializers.CharField()
    customer_email = serializers.EmailField()
    amount = serializers.DecimalField(max_digits=12, decimal_places=2)
    currency = serializers.CharField()
    status = serializers.ChoiceField(choices=OrderStatus.choices)
    failure_reason = serializers.CharField(allow_blank=True)
    charge_id = serializers.CharField(allow_blank=True)
    refund_id = serializers.CharField(allow_blank=True)
    email_sent = serializers.SerializerMethodField()
    fraud_review_required = serializers.BooleanField()
    fraud_approved = serializers.BooleanField(allow_null=True)
    review = serializers.SerializerMethodField()
    run_id = serializers.UUIDField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    links = serializers.SerializerMethodField()

    def get_email_sent(self, order: Order) -> bool:
        return order_email_sent(order)

    @extend_schema_field(ReviewOutputSerializer(allow_null=True))
    def get_review(self, order: Order) -> dict[str, Any] | None:
        info = order_review_info(order)
        return None if info is None else ReviewOutputSerializer(info).data

    @extend_schema_field(OrderLinksSerializer)
    def get_links(self, order: Order) -> dict[str, str | None]:
        request = self.context["request"]
        order_url = reverse("api:order-detail", kwargs={"order_id": order.order_id})
        if order.run_id is None:
            return {"self": request.build_absolute_uri(order_url), "run": None, "trace": None}
        run_url = reverse("api:run-detail", kwargs={"run_id": order.run_id})
        return {
            "self": request.build_absolute_uri(order_url),
            "run": request.build_absolute_uri(run_url),
            "trace": request.build_absolute_uri(
                reverse("workflows:run_detail", args=[order.run_id])
            ),
        }


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
    data = serializers.JSONField()
    resumed_at = serializers.DateTimeField(allow_null=True)
    resumed_by = serializers.CharField(
        source="resumed_by.get_username", allow_null=True, default=None
    )


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
    steps = StepOutputSerializer(many=True)
    waits = WaitOutputSerializer(many=True)


class ErrorOutputSerializer(serializers.Serializer):
    detail = serializers.CharField()
