from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from orders.api.stripe_webhook_view import stripe_webhook_view
from workflows.observability import metrics_view

from .health import healthz

# The fraud-review queue needs the width more than admin needs its app sidebar.
admin.site.enable_nav_sidebar = False

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    # Prometheus, with `Authorization: Bearer <METRICS_TOKEN>` (workflows/observability.py).
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("webhooks/stripe/", stripe_webhook_view, name="stripe-webhook"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", include("orders.api.urls")),
    path("", include("workflows.urls")),
]
