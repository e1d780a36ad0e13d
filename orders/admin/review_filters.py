"""The fraud-review queue's filters: state, claim ("mine"), time left, the risk flags
worth a filter of their own (a new email domain, an amount RATIO_HIGH times the
customer's average), currency and amount."""

from datetime import timedelta
from decimal import Decimal
from typing import cast

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from workflows.models import WaitStatus

from ..models import FraudReview, FraudReviewQuerySet, ReviewState
from ..risk import RATIO_HIGH, reviews_domain_new, reviews_ratio_high
from ..selectors import claims_live


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


class ClaimFilter(admin.SimpleListFilter):
    title = "claim"
    parameter_name = "claim"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return [("mine", "by me"), ("others", "by others"), ("free", "by nobody")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        live = claims_live() & Q(status=WaitStatus.WAITING)
        mine = Q(claim__claimed_by=request.user)
        if self.value() == "mine":
            return queryset.filter(live & mine)
        if self.value() == "others":
            return queryset.filter(live & ~mine)
        if self.value() == "free":
            return queryset.exclude(live)
        return queryset


class CurrencyFilter(admin.SimpleListFilter):
    title = "currency"
    parameter_name = "currency"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        codes = (
            FraudReview.objects.exclude(run__order__isnull=True)
            .values_list("run__order__currency", flat=True)
            .distinct()
            .order_by("run__order__currency")
        )
        return [(code, code.upper()) for code in codes]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        return queryset.filter(run__order__currency=self.value()) if self.value() else queryset


# In the currency's major units: a queue mixing currencies is filtered by currency first.
AMOUNT_RANGES = {
    "lt1k": ("under 1,000", None, Decimal(1000)),
    "1k-5k": ("1,000 to 5,000", Decimal(1000), Decimal(5000)),
    "5k-20k": ("5,000 to 20,000", Decimal(5000), Decimal(20000)),
    "20k": ("20,000 and more", Decimal(20000), None),
}


class AmountFilter(admin.SimpleListFilter):
    title = "amount"
    parameter_name = "amount"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return [(key, label) for key, (label, _, _) in AMOUNT_RANGES.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        if self.value() not in AMOUNT_RANGES:
            return queryset
        _, low, high = AMOUNT_RANGES[str(self.value())]
        if low is not None:
            queryset = queryset.filter(run__order__amount__gte=low)
        if high is not None:
            queryset = queryset.filter(run__order__amount__lt=high)
        return queryset


class NewDomainFilter(admin.SimpleListFilter):
    title = "email domain"
    parameter_name = "domain"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return [("new", "new (first order)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        return reviews_domain_new(queryset) if self.value() == "new" else queryset


class RatioFilter(admin.SimpleListFilter):
    title = "vs. the customer's average"
    parameter_name = "ratio"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return [("high", f"{RATIO_HIGH}\u00d7 or more")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        return reviews_ratio_high(queryset) if self.value() == "high" else queryset


TIME_LEFT_WITHIN = {
    "1h": ("under 1 hour", 1),
    "4h": ("under 4 hours", 4),
    "24h": ("under 24 hours", 24),
}


class TimeLeftFilter(admin.SimpleListFilter):
    title = "time left"
    parameter_name = "left"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return [(key, label) for key, (label, _) in TIME_LEFT_WITHIN.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        if self.value() not in TIME_LEFT_WITHIN:
            return queryset
        now = timezone.now()
        hours = TIME_LEFT_WITHIN[str(self.value())][1]
        return queryset.filter(
            status=WaitStatus.WAITING, deadline__gt=now, deadline__lte=now + timedelta(hours=hours)
        )
