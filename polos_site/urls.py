from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from orders.api.stripe_webhook_view import stripe_webhook_view
from workflows.observability import metrics_view

from .health import healthz

# The fraud-review queue needs the width more than admin needs its app sidebar.
admin.site.enable_nav_sidebar = False

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    # Prometheus, with `Authorization: Bearer <METRICS_TOKEN>` (workflows/observability/).
    path("metrics", metrics_view, name="metrics"),
    # The client webhooks' admin pages moved with their app (orders/client_webhooks/):
    # links to where they were still land.
    re_path(
        r"^admin/orders/(?P<page>webhook(?:endpoint|delivery|attempt)/.*)$",
        RedirectView.as_view(url="/admin/client_webhooks/%(page)s", query_string=True),
    ),
    path("admin/", admin.site.urls),
    path("webhooks/stripe/", stripe_webhook_view, name="stripe-webhook"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", include("orders.api.urls")),
    path("", include("workflows.console.urls")),
]
