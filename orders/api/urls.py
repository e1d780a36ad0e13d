from django.urls import path

from orders.client_webhooks.api.urls import urlpatterns as webhook_urlpatterns

from .views import OrderDetailApi, OrderListCreateApi, OrderReviewDecideApi, RunDetailApi

app_name = "api"

urlpatterns = [
    path("orders/", OrderListCreateApi.as_view(), name="order-list"),
    path("orders/<str:order_id>/", OrderDetailApi.as_view(), name="order-detail"),
    path("orders/<str:order_id>/review/", OrderReviewDecideApi.as_view(), name="order-review"),
    # A malformed id must get the API's JSON 404, not the URL resolver's HTML one.
    path("runs/<str:run_id>/", RunDetailApi.as_view(), name="run-detail"),
    *webhook_urlpatterns,
]
