"""Client webhook endpoints and their deliveries in admin, kept together (they move as
one to the client webhooks' own app)."""

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template import engines
from django.urls import reverse
from django.utils.html import format_html

from ..client_webhooks import (
    WebhookRetryError,
    webhook_delivery_retry,
    webhook_endpoint_create,
    webhook_endpoint_enable,
    webhook_endpoint_rotate_secret,
    webhook_url_addresses,
)
from ..models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent

# The one page that shows an endpoint's secret (after adding it, or rotating): rendered
# once, never stored in a message or a log.
SECRET_PAGE = engines["django"].from_string(
    """{% extends "admin/base_site.html" %}
{% block content %}
<p>Copy each secret now: it is not shown again. Receivers verify signatures with it
(see the README, "Webhooks to intake clients").</p>
<table>
  <tr><th>endpoint</th><th>secret</th></tr>
  {% for endpoint in endpoints %}
  <tr><td><a href="{{ endpoint.link }}">{{ endpoint.url }}</a></td>
      <td><code>{{ endpoint.secret }}</code></td></tr>
  {% endfor %}
</table>
{% endblock %}"""
)


def enabled_badge(endpoint: WebhookEndpoint) -> str:
    colour, text = ("#1e7e34", "enabled") if endpoint.enabled else ("#ba2121", "DISABLED")
    return format_html(
        '<span style="display:inline-block;padding:1px 8px;border-radius:9px;color:#fff;'
        'background:{};font-size:11px;font-weight:600">{}</span>',
        colour,
        text,
    )


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=2048, assume_scheme="https")
    events = forms.MultipleChoiceField(
        choices=WebhookEvent.choices, widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("client", "url", "events")

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        try:
            webhook_url_addresses(url)  # the domain's rule, as the API applies it
        except ValidationError as exc:
            raise ValidationError(exc.message_dict["url"]) from None
        return url


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    """Endpoints of the API clients. The secret is never shown here except on the page
    right after adding an endpoint or rotating its secret."""

    form = WebhookEndpointForm
    list_display = (
        "url",
        "client",
        "events_column",
        "state_column",
        "disabled_reason",
        "consecutive_failures",
        "created_at",
    )
    list_filter = ("enabled",)
    list_select_related = ("client",)
    search_fields = ("url", "client__username")
    actions = ["enable_selected", "rotate_secret_selected"]
    readonly_fields = ("state_column", "disabled_reason", "consecutive_failures", "created_at")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return ("client", "url", "events")
        return ("client", "url", "events", *self.readonly_fields)

    @admin.display(description="events")
    def events_column(self, endpoint: WebhookEndpoint) -> str:
        return ", ".join(endpoint.events)

    @admin.display(description="state", ordering="enabled")
    def state_column(self, endpoint: WebhookEndpoint) -> str:
        return enabled_badge(endpoint)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        created = webhook_endpoint_create(
            client=obj.client, url=obj.url, events=form.cleaned_data["events"]
        )
        obj.pk, obj.secret, obj.created_at = created.pk, created.secret, created.created_at

    def response_add(self, request: HttpRequest, obj: Any, post_url_continue: Any = None) -> Any:
        return self._secrets_page(request, [obj], "Webhook endpoint added")

    def _secrets_page(
        self, request: HttpRequest, endpoints: list[WebhookEndpoint], title: str
    ) -> HttpResponse:
        rows = [
            {
                "url": endpoint.url,
                "secret": endpoint.secret,
                "link": reverse("admin:orders_webhookendpoint_change", args=[endpoint.pk]),
            }
            for endpoint in endpoints
        ]
        context = {**self.admin_site.each_context(request), "title": title, "endpoints": rows}
        response = HttpResponse(SECRET_PAGE.render(context, request))
        response["Cache-Control"] = "no-store"
        return response

    def has_rotate_secret_permission(self, request: HttpRequest) -> bool:
        """Rotating replaces what the client's receiver verifies with, and shows the new
        secret: it changes the endpoint."""
        return self.has_change_permission(request)

    @admin.action(
        description="Enable selected endpoints (reset their failure count)", permissions=["change"]
    )
    def enable_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        for endpoint in queryset:
            webhook_endpoint_enable(endpoint=endpoint)
        self.message_user(request, f"Enabled {len(queryset)} endpoint(s).", messages.SUCCESS)

    @admin.action(
        description="Rotate the secret of selected endpoints", permissions=["rotate_secret"]
    )
    def rotate_secret_selected(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
        rotated = [webhook_endpoint_rotate_secret(endpoint=endpoint) for endpoint in queryset]
        return self._secrets_page(request, rotated, "New webhook secrets")


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    fields = ("number", "at", "status_code", "latency_ms", "response_head", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """Every event sent to an endpoint, with its attempts. Retrying goes through
    `webhook_delivery_retry` (as `manage.py webhooks_retry` does)."""

    list_display = (
        "event_type",
        "event_id",
        "endpoint_column",
        "order",
        "status",
        "attempts",
        "last_attempt_at",
        "next_attempt_at",
        "created_at",
    )
    list_filter = ("status", "event_type", "endpoint__enabled")
    list_select_related = ("endpoint", "order")
    search_fields = ("event_id", "order__order_id", "endpoint__url")
    date_hierarchy = "created_at"
    actions = ["retry_selected"]
    inlines = [WebhookAttemptInline]
    fields = (
        "event_id",
        "event_type",
        "endpoint_column",
        "order",
        "status",
        "attempts",
        "last_attempt_at",
        "next_attempt_at",
        "run",
        "created_at",
        "payload_column",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="endpoint", ordering="endpoint__url")
    def endpoint_column(self, delivery: WebhookDelivery) -> str:
        endpoint = delivery.endpoint
        url = reverse("admin:orders_webhookendpoint_change", args=[endpoint.pk])
        state = "" if endpoint.enabled else format_html(" {}", enabled_badge(endpoint))
        return format_html('<a href="{}">{}</a>{}', url, endpoint.url, state)

    @admin.display(description="payload")
    def payload_column(self, delivery: WebhookDelivery) -> str:
        return format_html("<pre>{}</pre>", json.dumps(delivery.payload, indent=2))

    def has_retry_permission(self, request: HttpRequest) -> bool:
        """Retrying sends the event to the endpoint again: the model's change permission,
        which `has_change_permission` does not ask (nobody edits a delivery's record)."""
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    @admin.action(description="Retry selected deliveries", permissions=["retry"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        retried = 0
        for delivery in queryset:
            try:
                webhook_delivery_retry(delivery=delivery)
            except WebhookRetryError as exc:
                self.message_user(request, str(exc), messages.WARNING)
                continue
            retried += 1
        if retried:
            self.message_user(request, f"Retrying {retried} delivery(ies).", messages.SUCCESS)
