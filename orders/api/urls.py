from django.urls import path

from .views import OrderDetailApi, OrderListCreateApi, OrderReviewDecideApi, RunDetailApi
from .webhook_views import (
    WebhookEndpointDetailApi,
    WebhookEndpointListCreateApi,
    WebhookEndpointRotateSecretApi,
)

app_name = "api"

urlpatterns = [
    path("orders/", OrderListCreateApi.as_view(), name="order-list"),
    path("orders/<str:order_id>/", OrderDetailApi.as_view(), name="order-detail"),
    path("orders/<str:order_id>/review/", OrderReviewDecideApi.as_view(), name="order-review"),
    # A malformed id must get the API's JSON 404, not the URL resolver's HTML one.
    path("runs/<str:run_id>/", RunDetailApi.as_view(), name="run-detail"),
    path("webhooks/", WebhookEndpointListCreateApi.as_view(), name="webhook-list"),
    path("webhooks/<str:endpoint_id>/", WebhookEndpointDetailApi.as_view(), name="webhook-detail"),
    path(
        "webhooks/<str:endpoint_id>/rotate-secret/",
        WebhookEndpointRotateSecretApi.as_view(),
        name="webhook-rotate-secret",
    ),
]
