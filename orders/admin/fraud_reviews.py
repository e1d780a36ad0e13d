"""The fraud-review queue and a review's page.

A review is decided only through `review_decide`, from the "Approve/Reject selected"
actions (with a confirmation page, like `delete_selected`) or the Approve/Reject buttons
of a review's page; both take `FraudReviewAdmin._decide`, which also records the
decision in the review's history."""

from collections.abc import Callable
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote, unquote
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

from workflows.console.views import VIEW_RUNS_PERMISSION
from workflows.models import WaitStatus

from ..models import FraudReview, FraudReviewQuerySet, Order, ReviewState
from ..risk import RiskSignals, review_risk_signals, reviews_with_risk
from ..rules import OrderRuleError, note_check
from ..services.reviews import ReviewError, review_decide
from .agent_trace import agent_trace
from .common import EMPTY, ReadOnlyForReviewersMixin, can_decide

STATE_COLOURS = {
    ReviewState.PENDING: "#b26b00",
    ReviewState.APPROVED: "#1e7e34",
    ReviewState.REJECTED: "#ba2121",
    ReviewState.EXPIRED: "#666",
    ReviewState.CANCELLED: "#666",
}


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
