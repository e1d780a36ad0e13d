from django.urls import path

from orders.client_webhooks.api.urls import urlpatterns as webhook_urlpatterns

from .views import (
    OrderDetailApi,
    OrderListCreateApi,
    OrderReviewApi,
    ReviewDecisionApi,
    ReviewDetailApi,
    ReviewListApi,
    RunDetailApi,
)

app_name = "api"

urlpatterns = [
    path("orders/", OrderListCreateApi.as_view(), name="order-list"),
    path("orders/<str:order_id>/", OrderDetailApi.as_view(), name="order-detail"),
    path("orders/<str:order_id>/review/", OrderReviewApi.as_view(), name="order-review"),
    path("reviews/", ReviewListApi.as_view(), name="review-list"),
    # As runs: a malformed id gets the API's JSON 404.
    path("reviews/<str:review_id>/", ReviewDetailApi.as_view(), name="review-detail"),
    path("reviews/<str:review_id>/decision/", ReviewDecisionApi.as_view(), name="review-decision"),
    # A malformed id must get the API's JSON 404, not the URL resolver's HTML one.
    path("runs/<str:run_id>/", RunDetailApi.as_view(), name="run-detail"),
    *webhook_urlpatterns,
]
