"""Client webhooks in admin: the endpoints (added through `webhook_endpoint_create`, the
secret shown once) and the deliveries with their attempts (retried through
`webhook_delivery_retry`)."""

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
from django.utils.timesince import timesince

from .models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from .selectors import RECENT_DELIVERIES, webhook_deliveries_recent
from .services import (
    WebhookRetryError,
    webhook_delivery_retry,
    webhook_endpoint_create,
    webhook_endpoint_enable,
    webhook_endpoint_rotate_secret,
    webhook_url_addresses,
)

# --- webhooks to API clients ------------------------------------------------------------

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


def health_badge(endpoint: WebhookEndpoint) -> str:
    """`failing 2 hours (14 failed attempts)`, or `healthy`, or `no attempt yet`."""
    if endpoint.failing_since is not None:
        return format_html(
            '<span style="color:#ba2121;font-weight:600">failing {} ({} failed attempt{})</span>',
            timesince(endpoint.failing_since),
            endpoint.failed_attempts,
            "" if endpoint.failed_attempts == 1 else "s",
        )
    if endpoint.last_attempt_at is None:
        return "no attempt yet"
    return format_html('<span style="color:{}">{}</span>', "#1e7e34", "healthy")


def _last_answer(delivery: WebhookDelivery) -> str:
    # Annotated by `webhook_deliveries_recent`.
    code = getattr(delivery, "last_status_code", None)
    return f"HTTP {code}" if code is not None else (getattr(delivery, "last_error", "") or "—")


class FailingFilter(admin.SimpleListFilter):
    title = "health"
    parameter_name = "health"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("failing", "failing"), ("healthy", "healthy")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "failing":
            return queryset.filter(failing_since__isnull=False)
        if self.value() == "healthy":
            return queryset.filter(failing_since__isnull=True)
        return queryset


# An endpoint's latest deliveries on its page, read-only, each linked to its own page.
RECENT_DELIVERIES_TABLE = engines["django"].from_string(
    """{% if deliveries %}<table>
  <thead><tr><th>created</th><th>event</th><th>order</th><th>status</th>
  <th>attempts</th><th>last answer</th></tr></thead>
  <tbody>{% for row in deliveries %}<tr>
    <td><a href="{{ row.link }}">{{ row.delivery.created_at|date:"Y-m-d H:i:s" }}</a></td>
    <td>{{ row.delivery.event_type }}</td><td>{{ row.delivery.order.order_id|default:"—" }}</td>
    <td>{{ row.delivery.status }}</td><td>{{ row.delivery.attempts }}</td>
    <td>{{ row.last|truncatechars:80 }}</td></tr>{% endfor %}</tbody>
</table>
<p>The latest {{ limit }} at most;
<a href="{{ all_url }}">all of this endpoint's deliveries</a>.</p>
{% else %}No delivery yet.{% endif %}"""
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
        "health_column",
        "last_status",
        "last_attempt_at",
        "created_at",
    )
    list_filter = ("enabled", FailingFilter)
    list_select_related = ("client",)
    search_fields = ("url", "client__username")
    actions = ["enable_selected", "rotate_secret_selected"]
    readonly_fields = (
        "state_column",
        "health_column",
        "last_status",
        "last_attempt_at",
        "failing_since",
        "failed_attempts",
        "consecutive_failures",
        "disabled_reason",
        "created_at",
        "recent_deliveries",
    )

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

    @admin.display(description="health", ordering="failing_since")
    def health_column(self, endpoint: WebhookEndpoint) -> str:
        return health_badge(endpoint)

    @admin.display(description="recent deliveries")
    def recent_deliveries(self, endpoint: WebhookEndpoint) -> str:
        deliveries = webhook_deliveries_recent(endpoint=endpoint)
        every = reverse("admin:client_webhooks_webhookdelivery_changelist")
        return RECENT_DELIVERIES_TABLE.render(
            {
                "deliveries": [
                    {
                        "delivery": d,
                        "link": reverse(
                            "admin:client_webhooks_webhookdelivery_change", args=[d.pk]
                        ),
                        "last": _last_answer(d),
                    }
                    for d in deliveries
                ],
                "limit": RECENT_DELIVERIES,
                "all_url": f"{every}?endpoint__id__exact={endpoint.pk}",
            }
        )

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
                "link": reverse("admin:client_webhooks_webhookendpoint_change", args=[endpoint.pk]),
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
        url = reverse("admin:client_webhooks_webhookendpoint_change", args=[endpoint.pk])
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
