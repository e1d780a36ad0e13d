"""The webhook endpoints API's routes, included in the intake API's (`api:` names,
under `/api/`)."""

from django.urls import path

from .views import (
    WebhookEndpointDetailApi,
    WebhookEndpointListCreateApi,
    WebhookEndpointRotateSecretApi,
)

urlpatterns = [
    path("webhooks/", WebhookEndpointListCreateApi.as_view(), name="webhook-list"),
    path("webhooks/<str:endpoint_id>/", WebhookEndpointDetailApi.as_view(), name="webhook-detail"),
    path(
        "webhooks/<str:endpoint_id>/rotate-secret/",
        WebhookEndpointRotateSecretApi.as_view(),
        name="webhook-rotate-secret",
    ),
]
