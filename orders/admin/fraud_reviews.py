"""The fraud-review queue and a review's page.

A review is decided only through `review_decide`, from the "Approve/Reject selected"
actions (with a confirmation page, like `delete_selected`) or the Approve/Reject buttons
of a review's page; both take `FraudReviewAdmin._decide`, which also records the
decision in the review's history.

The page is laid out to be decided in one screen (1440x900): a decision bar with the
amount, the time left, the risk flags and the buttons on top, the agent's steps in plain
words below. Reviewers claim reviews (`review_claim`) so that two of them do not study
the same order; a claim is advisory: deciding over someone else's claim takes a
confirmation that names them (the `over_claim` field)."""

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
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from workflows.console.views import VIEW_RUNS_PERMISSION
from workflows.models import WaitStatus

from ..models import FraudReview, Order
from ..risk import (
    RiskSignals,
    review_risk_signals,
    reviews_with_risk,
    risk_flags,
)
from ..rules import REVIEW_NOTE_MAX_LENGTH, OrderRuleError, note_check
from ..selectors import review_claim_live, review_next
from ..services.reviews import ReviewError, review_claim, review_decide, review_release
from .agent_trace import agent_trace
from .common import EMPTY, ReadOnlyForReviewersMixin, can_decide
from .review_cells import (
    amount_big,
    amount_text,
    claimant_name,
    flag_chip,
    risk_column,
    state_badge,
    time_left,
)
from .review_filters import (
    AmountFilter,
    ClaimFilter,
    CurrencyFilter,
    NewDomainFilter,
    RatioFilter,
    ReviewStateFilter,
    TimeLeftFilter,
)

# The form field confirming a decision over someone else's claim: their username (one
# review's page) or the review's pk (the list actions' confirmation page).
OVER_CLAIM = "over_claim"


@admin.register(FraudReview)
class FraudReviewAdmin(ReadOnlyForReviewersMixin, admin.ModelAdmin):
    # Risk first, and narrow: the queue fits 1440 px without scrolling sideways.
    list_display = (
        "order_column",
        "amount_column",
        "ratio_column",
        "domain_column",
        "velocity_column",
        "history_column",
        "stripe_risk_column",
        "time_left_column",
        "claim_column",
        "customer_column",
        "state_column",
    )
    list_display_links = ("order_column",)
    list_filter = (
        ReviewStateFilter,
        ClaimFilter,
        TimeLeftFilter,
        NewDomainFilter,
        RatioFilter,
        CurrencyFilter,
        AmountFilter,
    )
    search_fields = ("run__order__order_id", "run__order__customer_id")
    search_help_text = "Search by order id or customer id."
    actions = ["claim_selected", "release_selected", "approve_selected", "reject_selected"]
    change_form_template = "admin/orders/fraudreview/change_form.html"
    change_list_template = "admin/orders/fraudreview/change_list.html"
    decide_confirmation_template = "admin/orders/fraudreview/decide_confirmation.html"

    # --- permissions: nobody adds, edits or deletes; reviewers view and decide --------

    def has_decide_permission(self, request: HttpRequest) -> bool:
        return can_decide(request)

    # --- the queue: pending first, then the oldest deadline -------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Annotated before ModelAdmin.get_queryset's ordering, which sorts on it.
        queryset = (
            reviews_with_risk(self.model._default_manager.get_queryset())
            .select_related("resumed_by", "claim__claimed_by")
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
        customer = review.data.get("customer_id", EMPTY)
        return format_html('<span class="queue-customer" title="{}">{}</span>', customer, customer)

    @admin.display(description="amount")
    def amount_column(self, review: FraudReview) -> str:
        return amount_text(review)

    @admin.display(description="time left", ordering="deadline")
    def time_left_column(self, review: FraudReview) -> str:
        return time_left(review)

    @admin.display(description="claimed")
    def claim_column(self, review: FraudReview) -> str:
        claim = review_claim_live(review)
        if claim is None:
            return EMPTY
        return format_html(
            '<span class="queue-claim" title="until {}">being reviewed by {}</span>',
            timezone.localtime(claim.lapses_at()).strftime("%H:%M"),
            claimant_name(claim),
        )

    @admin.display(description="state", ordering="status")
    def state_column(self, review: FraudReview) -> str:
        return state_badge(review)

    # --- risk signals, from the queryset's annotations (no query per row) -------------

    @staticmethod
    def _risk(review: FraudReview) -> RiskSignals | None:
        if not hasattr(review, "_risk_signals"):
            review._risk_signals = review_risk_signals(review=review)
        return review._risk_signals

    ratio_column = risk_column("\u00d7 avg", "ratio")
    domain_column = risk_column("domain", "domain")
    velocity_column = risk_column("24 h", "velocity")
    history_column = risk_column("history", "rejections", "refunds")
    stripe_risk_column = risk_column("Stripe", "stripe")

    # --- actions: claim; confirm, then decide each review through the service --------

    @admin.action(description="Claim selected (I am reviewing them)", permissions=["decide"])
    def claim_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        claimed, refused = [], []
        for review in queryset:
            try:
                review_claim(review=review, by=cast(User, request.user))
            except ReviewError as exc:
                refused.append(str(exc))
                continue
            claimed.append(review.data.get("order_id", "?"))
        if claimed:
            self.message_user(request, f"Claimed: {', '.join(claimed)}.", messages.SUCCESS)
        for text in refused:
            self.message_user(request, f"{text}: not claimed.", messages.WARNING)

    @admin.action(description="Release my claims on selected", permissions=["decide"])
    def release_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        released = [
            review.data.get("order_id", "?")
            for review in queryset
            if review_release(review=review, by=cast(User, request.user))
        ]
        self.message_user(
            request,
            f"Released: {', '.join(released)}." if released else "You held no claim on those.",
            messages.SUCCESS if released else messages.WARNING,
        )

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
        confirmed = set(request.POST.getlist(OVER_CLAIM))
        decided: list[str] = []
        for review in reviews:
            claimant = self._claimant_other(request, review)
            if claimant and str(review.pk) not in confirmed:
                self.message_user(
                    request,
                    f"{review} is being reviewed by {claimant}: not decided "
                    "(the confirmation did not name them).",
                    messages.WARNING,
                )
                continue
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

    @staticmethod
    def _claimant_other(request: HttpRequest, review: FraudReview) -> str:
        """Who else holds a live claim on the review ("" if nobody else does)."""
        claim = review_claim_live(review)
        if claim is None or claim.claimed_by_id == request.user.pk:
            return ""
        return claimant_name(claim)

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
                    "claimant": self._claimant_other(request, review),
                }
                for review in reviews
            ],
            "open_count": sum(1 for review in reviews if review.is_open),
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "over_claim": OVER_CLAIM,
            "opts": opts,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.decide_confirmation_template, context)

    # --- the review page, its decide and claim URLs ---------------------------------

    def _url_name(self, view: str) -> str:
        return f"{self.opts.app_label}_{self.opts.model_name}_{view}"

    def _url(self, review: FraudReview, view: str) -> str:
        return reverse(
            f"admin:{self._url_name(view)}",
            args=[quote(review.pk)],
            current_app=self.admin_site.name,
        )

    def _changelist_url(self) -> str:
        return reverse(f"admin:{self._url_name('changelist')}", current_app=self.admin_site.name)

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
            path(
                "<path:object_id>/claim/",
                self.admin_site.admin_view(self.claim_view),
                name=self._url_name("claim"),
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
        risk = self._risk(review)
        claim = review_claim_live(review)
        following = review_next(after=review, user=cast(User, request.user))
        context = {
            "title": f"Fraud review of order {review.data.get('order_id', '?')}",
            "subtitle": None,
            "review": review,
            "order": order,
            "amount": amount_text(review),
            "amount_big": amount_big(review),
            "state_badge": state_badge(review),
            "time_left": time_left(review),
            "trace": agent_trace(review.run_id),
            "risk": risk,
            "flags": format_html_join(
                "", "<li>{}</li>", ((flag_chip(flag),) for flag in risk_flags(risk))
            )
            if risk
            else "",
            "claim": claim,
            "claimed_by_me": claim is not None and claim.claimed_by_id == request.user.pk,
            "claimant_other": self._claimant_other(request, review),
            "over_claim": OVER_CLAIM,
            "claim_url": self._url(review, "claim"),
            "next_url": self._url(following, "change") if following else "",
            "queue_url": self._changelist_url(),
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
            "note_max_length": REVIEW_NOTE_MAX_LENGTH,
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

    def claim_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Claim the review for the signed-in reviewer, or (`release`) give it up."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_decide_permission(request):
            raise PermissionDenied
        review = self.get_object(request, unquote(object_id))
        if review is None:
            raise Http404("No such fraud review")
        user = cast(User, request.user)
        order_id = review.data.get("order_id", "?")
        if request.POST.get("release"):
            released = review_release(review=review, by=user)
            self.message_user(
                request,
                f"Released your claim on order {order_id}."
                if released
                else f"You held no claim on order {order_id}.",
                messages.SUCCESS if released else messages.WARNING,
            )
        else:
            try:
                claim = review_claim(review=review, by=user)
            except ReviewError as exc:
                self.message_user(request, f"{exc}: not claimed.", messages.WARNING)
            else:
                until = timezone.localtime(claim.lapses_at()).strftime("%H:%M")
                self.message_user(
                    request,
                    f"You are reviewing order {order_id}; others see it until {until}.",
                    messages.SUCCESS,
                )
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
        claimant = self._claimant_other(request, review)
        if claimant and request.POST.get(OVER_CLAIM) != claimant:
            self.message_user(
                request,
                f"{claimant} is reviewing this order. Nothing was decided: tick "
                f"\u201cdecide although {claimant} is reviewing it\u201d to decide anyway.",
                messages.ERROR,
            )
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
        if request.POST.get("open_next"):
            following = review_next(after=review, user=cast(User, request.user))
            if following is None:
                self.message_user(request, "No other review is waiting.", messages.INFO)
                return HttpResponseRedirect(self._changelist_url())
            return HttpResponseRedirect(self._url(following, "change"))
        return HttpResponseRedirect(page)
