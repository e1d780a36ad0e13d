"""Shapes of the webhook endpoints API. What a URL or an event list may be is the
domain's rule (`orders.client_webhooks.services`), not checked here."""

from rest_framework import serializers

from ..models import WebhookEvent


class WebhookEndpointCreateInputSerializer(serializers.Serializer):
    url = serializers.CharField(
        trim_whitespace=False,
        help_text="https URL (http only where WEBHOOKS_ALLOW_HTTP); its host must resolve "
        "to public addresses.",
    )
    events = serializers.ListField(
        child=serializers.CharField(),
        allow_empty=True,
        help_text=f"Event types: {', '.join(WebhookEvent.values)}.",
    )


class WebhookEndpointOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    url = serializers.CharField()
    events = serializers.ListField(child=serializers.ChoiceField(choices=WebhookEvent.choices))
    enabled = serializers.BooleanField()
    disabled_reason = serializers.CharField(
        allow_blank=True, help_text="Why the endpoint was disabled (too many failed deliveries)."
    )
    created_at = serializers.DateTimeField()


class WebhookEndpointSecretOutputSerializer(WebhookEndpointOutputSerializer):
    secret = serializers.CharField(
        help_text="`whsec_` + base64: shown only now (at creation and on rotation). Verify "
        "each delivery's `webhook-signature` with it (Standard Webhooks)."
    )
