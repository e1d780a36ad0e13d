"""Orders and the fraud-review queue in admin.

Nothing here is edited through forms: orders are read-only records, and a review is
decided only through `review_decide`, from the "Approve/Reject selected" actions (with
a confirmation page, like `delete_selected`) or the Approve/Reject buttons of a
review's page; both take `FraudReviewAdmin._decide`, which also records the decision in
the review's history. Users holding the decide permission (the "Fraud reviewers" group) may
also view the queue and the orders, without any model's view permission.
"""

import json
from collections.abc import Callable
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import flatten_fieldsets, quote, unquote
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db.models import Case, IntegerField, QuerySet, Value, When
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.text import Truncator

from workflows import NonRetryableError
from workflows.agents.transcript import agent_calls_prefix, llm_reply, tool_call_recorded
from workflows.console.step_tree import StepNode, step_find, step_tree
from workflows.console.views import VIEW_RUNS_PERMISSION
from workflows.models import StepKind, StepRecord, WaitStatus

from .models import (
    EmailRecord,
    FraudReview,
    FraudReviewQuerySet,
    Order,
    ReviewState,
    StripeEvent,
)
from .money import amount_display
from .order_processing import START_ORDER_AGENT_KEY
from .payments import TransientPaymentError
from .risk import RiskSignals, review_risk_signals, reviews_with_risk
from .rules import OrderRuleError, note_check
from .selectors import (
    ORDER_STATUS_CHOICES,
    order_email_sent,
    order_failure_shown,
    order_status_shown,
    order_waiting_for,
    orders_in_status,
)
from .services import (
    CANCEL_PERMISSION,
    DECIDE_PERMISSION,
    OrderCancelError,
    ReviewError,
    order_cancel,
    review_decide,
)

EMPTY = "—"
STATE_COLOURS = {
    ReviewState.PENDING: "#b26b00",
    ReviewState.APPROVED: "#1e7e34",
    ReviewState.REJECTED: "#ba2121",
    ReviewState.EXPIRED: "#666",
    ReviewState.CANCELLED: "#666",
}


def can_decide(request: HttpRequest) -> bool:
    return request.user.has_perm(DECIDE_PERMISSION)


def time_left(review: FraudReview) -> str:
    """Humanized time until the deadline; "expired" past it; "—" once decided."""
    if review.status == WaitStatus.EXPIRED:
        return "expired"
    return review.time_left_text() if review.status == WaitStatus.WAITING else EMPTY


def state_badge(review: FraudReview) -> str:
    state = review.state
    return format_html(
        '<span class="review-state" style="display:inline-block;padding:1px 8px;'
        'border-radius:9px;color:#fff;background:{};font-size:11px;font-weight:600">{}</span>',
        STATE_COLOURS.get(state, "#666"),
        state.label,
    )


def amount_text(review: FraudReview) -> str:
    """The amount as the workflow recorded it, already in the currency's decimals."""
    return f"{review.data.get('amount', '?')} {str(review.data.get('currency', '')).upper()}"


def _compact(value: Any, limit: int = 1500) -> str:
    """A JSON value (or a JSON text) on as few lines as it takes, truncated."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return Truncator(value).chars(limit)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return Truncator(text).chars(limit)


def agent_trace(run_id: Any) -> list[dict[str, Any]]:
    """The order agent's model messages and tool calls, in order, for the review page."""
    records = StepRecord.objects.filter(
        run_id=run_id, key__startswith=agent_calls_prefix(START_ORDER_AGENT_KEY)
    ).order_by("position")
    agent = step_find(step_tree([StepNode.of_record(r) for r in records]), START_ORDER_AGENT_KEY)
    entries: list[dict[str, Any]] = []
    for step in (node.record for node in (agent.descendants() if agent else [])):
        if step is None:
            continue
        if step.kind == StepKind.LLM:
            reply = llm_reply(step.output)
            entries.append(
                {
                    "key": step.key,
                    "kind": "llm",
                    "content": _compact(reply.content if reply else None),
                    "tool_calls": [
                        {"name": call.name, "arguments": _compact(call.arguments)}
                        for call in (reply.tool_calls if reply else ())
                    ],
                    "error": step.error,
                }
            )
        elif step.kind == StepKind.TOOL:
            call = tool_call_recorded(step.key, step.input, step.output)
            entries.append(
                {
                    "key": step.key,
                    "kind": "tool",
                    "tool": call.tool_name,
                    "arguments": _compact(call.arguments),
                    "output": _compact(call.output),
                    "error": call.error or step.error,
                }
            )
    return entries


class ReviewStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return list(ReviewState.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        value = self.value()
        if value in ReviewState.values:
            # The filter is FraudReviewAdmin's: its queryset is the reviews' own.
            return cast(FraudReviewQuerySet, queryset).in_state(value)
        return queryset


class ReadOnlyForReviewersMixin(admin.ModelAdmin[Any]):
    """Records nobody adds or edits here, which fraud reviewers may view without holding
    the model's view permission (their group holds only the decide permission)."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) or can_decide(request)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return super().has_module_permission(request) or can_decide(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _risk_column(attribute: str, description: str) -> Callable[[Any, FraudReview], str]:
    """A review-queue column showing one of the review's risk signals (see orders/risk.py)."""

    @admin.display(description=description)
    def column(model_admin: Any, review: FraudReview) -> str:
        risk = model_admin._risk(review)
        return str(getattr(risk, attribute)) if risk else EMPTY

    return column


@admin.register(FraudReview)
class FraudReviewAdmin(ReadOnlyForReviewersMixin, admin.ModelAdmin):
    list_display = (
        "order_column",
        "state_column",
        "amount_column",
        "customer_column",
        "time_left_column",
        "waiting_since",
        "message_column",
        "charge_column",
        "history_column",
        "ratio_column",
        "velocity_column",
        "domain_column",
        "stripe_risk_column",
    )
    list_display_links = ("order_column",)
    list_filter = (ReviewStateFilter,)
    search_fields = ("run__order__order_id", "run__order__customer_id")
    search_help_text = "Search by order id or customer id."
    actions = ["approve_selected", "reject_selected"]
    change_form_template = "admin/orders/fraudreview/change_form.html"
    decide_confirmation_template = "admin/orders/fraudreview/decide_confirmation.html"

    # --- permissions: nobody adds, edits or deletes; reviewers view and decide --------

    def has_decide_permission(self, request: HttpRequest) -> bool:
        return can_decide(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    # --- the queue: pending first, then the oldest deadline -------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Annotated before ModelAdmin.get_queryset's ordering, which sorts on it.
        queryset = (
            reviews_with_risk(self.model._default_manager.get_queryset())
            .select_related("resumed_by")
            .annotate(
                pending_first=Case(
                    When(status=WaitStatus.WAITING, then=Value(0)),
                    default=Value(1),
                    output_field=IntegerField(),
                )
            )
        )
        return queryset.order_by(*self.get_ordering(request))

    def get_ordering(self, request: HttpRequest) -> list[str]:
        return ["pending_first", "deadline"]

    @admin.display(description="order")
    def order_column(self, review: FraudReview) -> str:
        return review.data.get("order_id", "?")

    @admin.display(description="customer")
    def customer_column(self, review: FraudReview) -> str:
        return review.data.get("customer_id", EMPTY)

    @admin.display(description="amount")
    def amount_column(self, review: FraudReview) -> str:
        return amount_text(review)

    @admin.display(description="charge id")
    def charge_column(self, review: FraudReview) -> str:
        return review.data.get("charge_id") or EMPTY

    @admin.display(description="waiting since", ordering="created_at")
    def waiting_since(self, review: FraudReview) -> Any:
        return review.created_at

    @admin.display(description="time left", ordering="deadline")
    def time_left_column(self, review: FraudReview) -> str:
        return time_left(review)

    @admin.display(description="agent's message")
    def message_column(self, review: FraudReview) -> str:
        return Truncator(review.data.get("message") or EMPTY).chars(60)

    @admin.display(description="state", ordering="status")
    def state_column(self, review: FraudReview) -> str:
        return state_badge(review)

    # --- risk signals, from the queryset's annotations (no query per row) -------------

    @staticmethod
    def _risk(review: FraudReview) -> RiskSignals | None:
        if not hasattr(review, "_risk_signals"):
            review._risk_signals = review_risk_signals(review=review)
        return review._risk_signals

    history_column = _risk_column("history_text", "history")
    ratio_column = _risk_column("ratio_text", "vs. average")
    velocity_column = _risk_column("velocity_text", "other orders, 24 h")
    domain_column = _risk_column("domain_text", "email domain")
    stripe_risk_column = _risk_column("stripe_text", "Stripe risk")

    # --- actions: confirm, then decide each review through the service ---------------

    @admin.action(description="Approve selected", permissions=["decide"])
    def approve_selected(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._decide_selected(request, queryset, approved=True)

    @admin.action(description="Reject selected", permissions=["decide"])
    def reject_selected(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._decide_selected(request, queryset, approved=False)

    def _decide_selected(
        self, request: HttpRequest, queryset: QuerySet, *, approved: bool
    ) -> HttpResponse | None:
        action = "approve_selected" if approved else "reject_selected"
        verb = "approved" if approved else "rejected"
        reviews = list(queryset)
        if not request.POST.get("post"):
            return self._confirmation(request, reviews, action=action, approved=approved)
        try:
            note = note_check(request.POST.get("note", ""))
        except OrderRuleError as exc:  # one message, not one per review
            self.message_user(request, f"Note refused: {exc} Nothing was decided.", messages.ERROR)
            return None
        orders = {o.run_id: o for o in Order.objects.filter(run_id__in=[r.run_id for r in reviews])}
        decided: list[str] = []
        for review in reviews:
            try:
                order = self._decide(
                    request, review, orders.get(review.run_id), approved=approved, note=note
                )
            except ReviewError as exc:
                self.message_user(request, str(exc), messages.WARNING)
                continue
            decided.append(order.order_id)
        if decided:
            count = len(decided)
            self.message_user(
                request,
                f"{count} review{'' if count == 1 else 's'} {verb}: {', '.join(decided)}.",
                messages.SUCCESS,
            )
        return None

    def _decide(
        self,
        request: HttpRequest,
        review: FraudReview,
        order: Order | None,
        *,
        approved: bool,
        note: str,
    ) -> Order:
        """Decide one review through `review_decide` and record it in the review's admin
        history (a LogEntry): the one way both the list actions and the review page
        decide. Raises `ReviewError` when it cannot be decided (no order, nothing to
        decide, already decided, expired)."""
        if order is None:
            raise ReviewError(f"{review} has no order.")
        # The admin lets only signed-in staff in: the user is never anonymous.
        review_decide(order=order, approved=approved, by=cast(User, request.user), note=note)
        verb = "Approved" if approved else "Rejected"
        self.log_change(request, review, f"{verb}. {note}".strip())
        return order

    def _confirmation(
        self, request: HttpRequest, reviews: list[FraudReview], *, action: str, approved: bool
    ) -> TemplateResponse:
        opts = self.opts
        title = "Approve fraud reviews" if approved else "Reject fraud reviews"
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "subtitle": None,
            "approve": approved,
            "rows": [
                {
                    "review": review,
                    "order_id": review.data.get("order_id", "?"),
                    "customer_id": review.data.get("customer_id", ""),
                    "amount": amount_text(review),
                    "state": review.state,
                    "open": review.is_open,
                    "time_left": time_left(review),
                }
                for review in reviews
            ],
            "open_count": sum(1 for review in reviews if review.is_open),
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "opts": opts,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.decide_confirmation_template, context)

    # --- the review page and its decide URL ---------------------------------------

    def _url_name(self, view: str) -> str:
        return f"{self.opts.app_label}_{self.opts.model_name}_{view}"

    def _url(self, review: FraudReview, view: str) -> str:
        return reverse(
            f"admin:{self._url_name(view)}",
            args=[quote(review.pk)],
            current_app=self.admin_site.name,
        )

    def get_urls(self) -> list:
        return [
            path(
                "order/<int:order_pk>/",
                self.admin_site.admin_view(self.by_order_view),
                name=self._url_name("by_order"),
            ),
            path(
                "<path:object_id>/decide/",
                self.admin_site.admin_view(self.decide_view),
                name=self._url_name("decide"),
            ),
            *super().get_urls(),
        ]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        review = self.get_object(request, unquote(object_id))
        if review is None or not self.has_view_permission(request, review):
            return super().change_view(request, object_id, form_url, extra_context)
        order = Order.objects.filter(run_id=review.run_id).first()
        context = {
            "title": f"Fraud review of order {review.data.get('order_id', '?')}",
            "subtitle": None,
            "review": review,
            "order": order,
            "amount": amount_text(review),
            "state_badge": state_badge(review),
            "time_left": time_left(review),
            "trace": agent_trace(review.run_id),
            "risk": self._risk(review),
            # The console's trace is for those who may read runs; the agent's part of
            # it is on this page for every reviewer.
            "trace_url": (
                reverse("workflows:run_detail", args=[review.run_id])
                if request.user.has_perm(VIEW_RUNS_PERMISSION)
                else None
            ),
            "decided": review.status == WaitStatus.RESUMED,
            "deadline_passed": review.status == WaitStatus.WAITING and not review.is_open,
            "can_decide": review.is_open and self.has_decide_permission(request),
            "decide_url": self._url(review, "decide"),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, context)

    def by_order_view(self, request: HttpRequest, order_pk: int) -> HttpResponse:
        """The reviewers' emails link here: the order's review, whichever run holds it
        now (a fork moves the order), and before its wait is recorded, the queue."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        order = Order.objects.filter(pk=order_pk).first()
        if order is None:
            raise Http404("No such order")
        review = FraudReview.objects.filter(run_id=order.run_id).first() if order.run_id else None
        if review is None:
            self.message_user(
                request, f"Order {order.order_id} has no review yet.", messages.WARNING
            )
            changelist = reverse(f"admin:{self._url_name('changelist')}")
            return HttpResponseRedirect(f"{changelist}?{urlencode({'q': order.order_id})}")
        return HttpResponseRedirect(self._url(review, "change"))

    def decide_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_decide_permission(request):
            raise PermissionDenied
        review = self.get_object(request, unquote(object_id))
        if review is None:
            raise Http404("No such fraud review")
        page = self._url(review, "change")
        decision = request.POST.get("decision")
        if decision not in ("approve", "reject"):
            self.message_user(request, "Choose Approve or Reject.", messages.ERROR)
            return HttpResponseRedirect(page)
        approved = decision == "approve"
        note = request.POST.get("note", "").strip()
        order = Order.objects.filter(run_id=review.run_id).first()
        try:
            order = self._decide(request, review, order, approved=approved, note=note)
        except ReviewError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(page)
        verb = "Approved" if approved else "Rejected"
        self.message_user(
            request, f"{verb} the review of order {order.order_id}.", messages.SUCCESS
        )
        return HttpResponseRedirect(page)


# --- orders ---------------------------------------------------------------------------


def can_view_orders(request: HttpRequest) -> bool:
    return request.user.has_perm("orders.view_order") or can_decide(request)


class EmailRecordInline(admin.TabularInline):
    model = EmailRecord
    fields = ("kind", "recipient", "subject", "status", "message_id", "created_at", "sent_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) or can_view_orders(request)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


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

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

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
            except (TransientPaymentError, NonRetryableError) as exc:  # the gateway
                self.message_user(
                    request,
                    f"Order {order.order_id} is cancelled but its payment was not released "
                    f"({exc}); cancel it again to retry.",
                    messages.ERROR,
                )
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
            return EMPTY
        url = reverse("admin:orders_fraudreview_change", args=[quote(review.pk)])
        return format_html('{} <a href="{}">open the review</a>', state_badge(review), url)


# --- Stripe's webhook events ------------------------------------------------------------


@admin.register(StripeEvent)
class StripeEventAdmin(admin.ModelAdmin):
    """Stripe's webhook events as received and applied (`orders.stripe_webhooks`): a
    record of what Stripe told us and what it did to which order, never edited here."""

    list_display = ("event_id", "type", "order_column", "outcome", "received_at")
    list_filter = ("type",)
    list_select_related = ("order",)
    search_fields = ("event_id", "order__order_id", "order__charge_id")
    search_help_text = "Search by event id, order id or PaymentIntent id."
    date_hierarchy = "received_at"
    fields = (
        "event_id",
        "type",
        "order_column",
        "outcome",
        "received_at",
        "processed_at",
        "payload_column",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="order", ordering="order__order_id")
    def order_column(self, event: StripeEvent) -> str:
        if event.order is None:
            return EMPTY
        url = reverse("admin:orders_order_change", args=[quote(event.order.pk)])
        return format_html('<a href="{}">{}</a>', url, event.order.order_id)

    @admin.display(description="payload")
    def payload_column(self, event: StripeEvent) -> str:
        return format_html("<pre>{}</pre>", json.dumps(event.payload, indent=2))
