"""Stripe's webhook events as received and applied, in admin."""

import json

from django.contrib import admin
from django.contrib.admin.utils import quote
from django.urls import reverse
from django.utils.html import format_html

from ..models import StripeEvent
from .common import EMPTY, ReadOnlyAdminMixin


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
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

    @admin.display(description="order", ordering="order__order_id")
    def order_column(self, event: StripeEvent) -> str:
        if event.order is None:
            return EMPTY
        url = reverse("admin:orders_order_change", args=[quote(event.order.pk)])
        return format_html('<a href="{}">{}</a>', url, event.order.order_id)

    @admin.display(description="payload")
    def payload_column(self, event: StripeEvent) -> str:
        return format_html("<pre>{}</pre>", json.dumps(event.payload, indent=2))
