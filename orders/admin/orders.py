"""Orders in admin: read-only records, with their emails; cancelling goes through
`order_cancel`."""

from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets, quote
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from ..errors import PaymentReleasePendingError
from ..models import EmailRecord, FraudReview, Order, ReviewState
from ..money import amount_display
from ..selectors import (
    ORDER_STATUS_CHOICES,
    order_email_sent,
    order_failure_shown,
    order_status_shown,
    order_waiting_for,
    orders_in_status,
)
from ..services.cancellation import CANCEL_PERMISSION, OrderCancelError, order_cancel
from .common import EMPTY, ReadOnlyAdminMixin, ReadOnlyForReviewersMixin, can_decide
from .review_cells import state_badge


def can_view_orders(request: HttpRequest) -> bool:
    return request.user.has_perm("orders.view_order") or can_decide(request)


class EmailRecordInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = EmailRecord
    fields = ("kind", "recipient", "subject", "status", "message_id", "created_at", "sent_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) or can_view_orders(request)


class OrderStatusFilter(admin.SimpleListFilter):
    """The status as shown: `needs attention` when the order's run stopped unsettled."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return list(ORDER_STATUS_CHOICES)

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        value = self.value()
        if value in dict(ORDER_STATUS_CHOICES):
            return orders_in_status(queryset, value)
        return queryset


@admin.register(Order)
class OrderAdmin(ReadOnlyForReviewersMixin, admin.ModelAdmin):
    list_display = (
        "order_id",
        "client",
        "customer_id",
        "amount_column",
        "status_column",
        "payment_status",
        "charge_id",
        "refund_id",
        "created_at",
    )
    list_filter = (OrderStatusFilter, "payment_status", "currency")
    list_select_related = ("client", "run")
    actions = ["cancel_selected"]
    search_fields = ("order_id", "customer_id", "customer_email")
    date_hierarchy = "created_at"
    inlines = [EmailRecordInline]
    fieldsets = (
        (None, {"fields": ("order_id", "customer_id", "customer_email", "amount_column")}),
        (
            "Status",
            {
                "fields": (
                    "status_column",
                    "waiting_column",
                    "failure_column",
                    "confirmation_column",
                    "fraud_review_required",
                    "fraud_approved",
                    "fraud_review_link",
                )
            },
        ),
        (
            "Payment",
            {
                "fields": (
                    "payment_status",
                    "charge_id",
                    "charged_amount_column",
                    "charged_at",
                    "refund_id",
                    "refunded_amount_column",
                    "refunded_at",
                    "payment_status_before_dispute",
                    "radar_review",
                    "stripe_events_link",
                )
            },
        ),
        ("Record", {"fields": ("client", "run", "idempotency_key", "created_at", "updated_at")}),
    )
    readonly_fields = flatten_fieldsets(fieldsets)

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(CANCEL_PERMISSION)

    @admin.action(
        description="Cancel selected orders (void or refund the payment)",
        permissions=["cancel"],
    )
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        done = []
        for order in queryset:
            try:
                order = order_cancel(order=order, by=cast(User, request.user))
            except OrderCancelError as exc:
                self.message_user(request, str(exc), messages.WARNING)
                continue
            except PaymentReleasePendingError as exc:
                self.message_user(request, f"{exc}; cancel it again to retry.", messages.ERROR)
                continue
            self.log_change(request, order, f"Cancelled; payment {order.payment_status}.")
            done.append(f"{order.order_id} (payment {order.payment_status})")
        if done:
            self.message_user(request, f"Cancelled: {', '.join(done)}.", messages.SUCCESS)

    @admin.display(description="status", ordering="status")
    def status_column(self, order: Order) -> str:
        return dict(ORDER_STATUS_CHOICES).get(order_status_shown(order), order.status)

    @admin.display(description="failure reason")
    def failure_column(self, order: Order) -> str:
        return order_failure_shown(order) or EMPTY

    @admin.display(description="confirmation emailed", boolean=True)
    def confirmation_column(self, order: Order) -> bool:
        return order_email_sent(order)  # the customer's; the reviewers' are listed below

    @admin.display(description="waiting for")
    def waiting_column(self, order: Order) -> str:
        return order_waiting_for(order) or EMPTY

    @admin.display(description="amount", ordering="amount")
    def amount_column(self, order: Order) -> str:
        return amount_display(order.amount, order.currency)

    @admin.display(description="charged amount")
    def charged_amount_column(self, order: Order) -> str:
        if order.charged_amount is None:
            return EMPTY
        return amount_display(order.charged_amount, order.currency)

    @admin.display(description="refunded amount")
    def refunded_amount_column(self, order: Order) -> str:
        if order.refunded_amount is None:
            return EMPTY
        return amount_display(order.refunded_amount, order.currency)

    @admin.display(description="Stripe events")
    def stripe_events_link(self, order: Order) -> str:
        count = order.stripe_events.count()
        if not count:
            return EMPTY
        url = reverse("admin:orders_stripeevent_changelist") + f"?order__id__exact={order.pk}"
        return format_html('<a href="{}">{} received</a>', url, count)

    @admin.display(description="fraud review")
    def fraud_review_link(self, order: Order) -> str:
        review = FraudReview.objects.filter(run_id=order.run_id).first() if order.run_id else None
        if review is None:
            if not order.review_state:
                return EMPTY
            # Its run's history was pruned: the order's own copy of how it ended.
            by = f" by {order.review_decided_by}" if order.review_decided_by else ""
            decided_at = order.review_decided_at
            when = f" at {decided_at:%Y-%m-%d %H:%M} UTC" if decided_at else ""
            note = f": {order.review_note}" if order.review_note else ""
            return format_html(
                "{}{}{}{} (review record kept; run history pruned)",
                ReviewState(order.review_state).label,
                by,
                when,
                note,
            )
        url = reverse("admin:orders_fraudreview_change", args=[quote(review.pk)])
        return format_html('{} <a href="{}">open the review</a>', state_badge(review), url)
