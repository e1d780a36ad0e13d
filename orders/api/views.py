"""The intake API and the reviewer API. Views translate HTTP to service calls (writes)
and selector calls (reads) and back; no business rule lives here. Who may call them:
`permissions.IntakeClientPermission`, every view's default, and
`permissions.FraudReviewerPermission` for `/api/reviews/`.

The intake endpoints are per client: a token sees and deduplicates only the orders its
user submitted, staff included. Another client's order or run is a 404. Staff see every
order in the admin (with `orders.view_order`) and every run in the console. The
reviewer endpoints are across clients: review ids are global."""

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db.models import QuerySet
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import SAFE_METHODS, BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orders.models import FraudReview, Order
from orders.presenters import order_review_presented
from orders.roles import DECIDE_PERMISSION, INTAKE_CLIENTS_GROUP, REVIEWERS_GROUP, api_permission
from orders.rules import IDEMPOTENCY_KEY_MAX_LENGTH, OrderRuleError, idempotency_key_check
from orders.schemas import OrderPayload
from orders.selectors import (
    ORDER_STATUS_CHOICES,
    REVIEW_STATE_CHOICES,
    order_as_created,
    order_get_for,
    order_list_for,
    review_get,
    review_order,
    reviews_list,
    run_get_for,
)
from orders.services.intake import OrderConflictError, order_create
from orders.services.reviews import ReviewError, review_decide

from .auth import request_client
from .pagination import MAX_PAGE_SIZE
from .permissions import FraudReviewerPermission, IntakeClientPermission
from .serializers import (
    ErrorOutputSerializer,
    FraudReviewOutputSerializer,
    OrderCreateInputSerializer,
    OrderListFilterSerializer,
    OrderOutputSerializer,
    ReviewDecisionInputSerializer,
    ReviewListFilterSerializer,
    ReviewOutputSerializer,
    RunOutputSerializer,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"


class ConflictError(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the resource."
    default_code = "conflict"


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorOutputSerializer, description=description)


FIELD_ERRORS = OpenApiResponse(
    response=OpenApiTypes.OBJECT,
    description="Invalid input: each field maps to its list of error messages.",
)
UNAUTHENTICATED = _error("No valid token (`Authorization: Token <key>`).")
FORBIDDEN = _error(
    f"The token's user lacks the permission: `{api_permission(write=True)}` to write, "
    f'`{api_permission(write=False)}` to read (the "{INTAKE_CLIENTS_GROUP}" group holds both).'
)
THROTTLED = _error("Too many requests; retry after the `Retry-After` seconds.")
ORDER_NOT_FOUND = _error("No order of yours with that id.")


def _order_response(request: Request, order: Order, code: int = status.HTTP_200_OK) -> Response:
    data = OrderOutputSerializer(order, context={"request": request}).data
    return Response(data, status=code)


class OrderListCreateApi(GenericAPIView):
    # Used by OPTIONS (DRF's metadata) to describe the POST body.
    serializer_class = OrderCreateInputSerializer

    def get_queryset(self) -> QuerySet[Order]:
        filters = OrderListFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        return order_list_for(
            client=request_client(self.request), status=filters.validated_data.get("status")
        )

    @extend_schema(
        operation_id="orders_list",
        summary="List your orders",
        description=f"Your orders, newest first; `limit` is capped at {MAX_PAGE_SIZE}.",
        parameters=[
            OpenApiParameter(
                "status",
                OpenApiTypes.STR,
                OpenApiParameter.QUERY,
                enum=[value for value, _ in ORDER_STATUS_CHOICES],
                description="Only orders in this status.",
            )
        ],
        responses={
            200: OrderOutputSerializer(many=True),
            400: FIELD_ERRORS,
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
            429: THROTTLED,
        },
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        data = OrderOutputSerializer(page, many=True, context={"request": request}).data
        return self.get_paginated_response(data)

    @extend_schema(
        operation_id="orders_create",
        summary="Submit an order",
        description=(
            "Creates the order and starts its workflow. Repeating a request with the same "
            "body (or the same `Idempotency-Key` and body) returns the existing order with "
            "200 and starts nothing; the same order id or key with another body is a 409. "
            "Order ids and keys are yours: another client's are no repeat and no conflict."
        ),
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                required=False,
                description=f"Client-chosen key, at most {IDEMPOTENCY_KEY_MAX_LENGTH} "
                "characters and no control characters, that makes retries safe.",
            )
        ],
        request=OrderCreateInputSerializer,
        responses={
            201: OpenApiResponse(OrderOutputSerializer, description="Created; its run started."),
            200: OpenApiResponse(OrderOutputSerializer, description="A repeat: existing order."),
            400: FIELD_ERRORS,
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
            409: _error("The order id or idempotency key was used with another body."),
            429: THROTTLED,
        },
    )
    def post(self, request: Request) -> Response:
        idempotency_key = request.headers.get(IDEMPOTENCY_HEADER, "").strip() or None
        if idempotency_key is not None:
            try:
                idempotency_key_check(idempotency_key)
            except OrderRuleError as exc:
                raise exceptions.ValidationError({IDEMPOTENCY_HEADER: [str(exc)]}) from None
        serializer = OrderCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            order, created = order_create(
                payload=OrderPayload(**serializer.validated_data),
                client=request_client(request),
                idempotency_key=idempotency_key,
            )
        except OrderConflictError as exc:
            raise ConflictError(str(exc)) from exc
        if created:
            return _order_response(request, order_as_created(order=order), status.HTTP_201_CREATED)
        order = order_get_for(client=request_client(request), order_id=order.order_id)
        return _order_response(request, order)


class OrderDetailApi(APIView):
    @extend_schema(
        operation_id="orders_retrieve",
        summary="Get one of your orders",
        responses={
            200: OrderOutputSerializer,
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
            404: ORDER_NOT_FOUND,
            429: THROTTLED,
        },
    )
    def get(self, request: Request, order_id: str) -> Response:
        return _order_response(
            request, order_get_for(client=request_client(request), order_id=order_id)
        )


def _decision(request: Request) -> dict[str, Any]:
    serializer = ReviewDecisionInputSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _decide(request: Request, review_of: Any, decision: dict[str, Any]) -> None:
    """The decision through `review_decide`, the one service the admin's decisions use
    too; its refusals as the API answers them."""
    try:
        review_decide(
            order=review_of,
            approved=decision["approved"],
            note=decision["note"],
            by=request_client(request),
        )
    except DjangoPermissionDenied as exc:
        raise exceptions.PermissionDenied(str(exc)) from exc
    except ReviewError as exc:
        raise ConflictError(str(exc)) from exc


class OrderReviewApi(APIView):
    """The review of one of the client's own orders: read it; deciding it here is
    deprecated (reviewers decide any client's order at `/api/reviews/{id}/decision/`)."""

    def get_permissions(self) -> list[BasePermission]:
        permissions = [IsAuthenticated(), IntakeClientPermission()]
        if self.request.method not in SAFE_METHODS:
            permissions.append(FraudReviewerPermission())
        return permissions

    @extend_schema(
        operation_id="orders_review_retrieve",
        summary="Get the fraud review of one of your orders",
        description=(
            "The review's state (pending, approved, rejected, expired, cancelled), who "
            "decided it, when, and the note; the order's body carries the same as "
            "`review`. Reading needs only the intake client's permission."
        ),
        responses={
            200: ReviewOutputSerializer,
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
            404: _error("No order of yours with that id, or it has no fraud review."),
            429: THROTTLED,
        },
    )
    def get(self, request: Request, order_id: str) -> Response:
        order = order_get_for(client=request_client(request), order_id=order_id)
        review = order_review_presented(order)
        if review is None:
            raise exceptions.NotFound(f"Order {order.order_id} has no fraud review")
        return Response(review)

    @extend_schema(
        operation_id="orders_review_decide",
        summary="Approve or reject the fraud review of one of your orders (deprecated)",
        description=(
            "Deprecated: use `POST /api/reviews/{id}/decision/`, which decides any "
            "client's order (the review's `id` is in the order's `review`). This one "
            "finds only the caller's own orders, and needs the "
            f"`{DECIDE_PERMISSION}` permission besides the intake client's. Resumes "
            "the order's workflow; the response is the order right after the decision. "
            "Answers carry `Deprecation: true` and a `Link` to the successor."
        ),
        deprecated=True,
        request=ReviewDecisionInputSerializer,
        responses={
            200: OrderOutputSerializer,
            400: FIELD_ERRORS,
            401: UNAUTHENTICATED,
            403: _error(
                "The user may not decide fraud reviews, or lacks the intake client's "
                "permission to write."
            ),
            404: ORDER_NOT_FOUND,
            409: _error("Nothing to decide: no review, already decided, or expired."),
            429: THROTTLED,
        },
    )
    def post(self, request: Request, order_id: str) -> Response:
        decision = _decision(request)
        order = order_get_for(client=request_client(request), order_id=order_id)
        _decide(request, order, decision)
        response = _order_response(
            request, order_get_for(client=request_client(request), order_id=order_id)
        )
        review = order_review_presented(order)
        response["Deprecation"] = "true"
        if review is not None:
            successor = reverse("api:review-decision", kwargs={"review_id": review["id"]})
            response["Link"] = f'<{request.build_absolute_uri(successor)}>; rel="successor-version"'
        return response


# --- the reviewer API: every client's reviews ---------------------------------------

REVIEWER_FORBIDDEN = _error(
    f'The token\'s user lacks `{DECIDE_PERMISSION}` (the "{REVIEWERS_GROUP}" group holds it).'
)
REVIEW_NOT_FOUND = _error("No fraud review with that id.")
REVIEW_ID = OpenApiParameter(
    "review_id",
    OpenApiTypes.INT,
    OpenApiParameter.PATH,
    description="The review's id (global; an order's body gives it as `review.id`).",
)


class ReviewListApi(GenericAPIView):
    permission_classes = [IsAuthenticated, FraudReviewerPermission]
    serializer_class = FraudReviewOutputSerializer

    def get_queryset(self) -> QuerySet[FraudReview]:
        filters = ReviewListFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        return reviews_list(state=filters.validated_data.get("state"))

    @extend_schema(
        operation_id="reviews_list",
        summary="List fraud reviews, every client's",
        description=(
            "For fraud reviewers (`orders.decide_fraud_review`): the reviews of every "
            "client's orders, the nearest deadline first, each with its order, the risk "
            f"signals and the agent's summary; `limit` is capped at {MAX_PAGE_SIZE}."
        ),
        parameters=[
            OpenApiParameter(
                "state",
                OpenApiTypes.STR,
                OpenApiParameter.QUERY,
                enum=[value for value, _ in REVIEW_STATE_CHOICES],
                description="Only reviews in this state (`pending`: awaiting a decision).",
            )
        ],
        responses={
            200: FraudReviewOutputSerializer(many=True),
            400: FIELD_ERRORS,
            401: UNAUTHENTICATED,
            403: REVIEWER_FORBIDDEN,
            429: THROTTLED,
        },
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        data = FraudReviewOutputSerializer(page, many=True, context={"request": request}).data
        return self.get_paginated_response(data)


class ReviewDetailApi(APIView):
    permission_classes = [IsAuthenticated, FraudReviewerPermission]

    @extend_schema(
        operation_id="reviews_retrieve",
        summary="Get one fraud review, any client's",
        parameters=[REVIEW_ID],
        responses={
            200: FraudReviewOutputSerializer,
            401: UNAUTHENTICATED,
            403: REVIEWER_FORBIDDEN,
            404: REVIEW_NOT_FOUND,
            429: THROTTLED,
        },
    )
    def get(self, request: Request, review_id: str) -> Response:
        review = review_get(review_id=review_id)
        return Response(FraudReviewOutputSerializer(review, context={"request": request}).data)


class ReviewDecisionApi(APIView):
    permission_classes = [IsAuthenticated, FraudReviewerPermission]

    @extend_schema(
        operation_id="reviews_decide",
        summary="Approve or reject a fraud review, any client's",
        description=(
            "The same decision as the admin's Approve/Reject (one service, the same "
            "rules): one decision per review, whoever makes it first; it resumes the "
            "order's workflow (approval captures the hold, rejection releases it). "
            "The response is the review right after the decision."
        ),
        parameters=[REVIEW_ID],
        request=ReviewDecisionInputSerializer,
        responses={
            200: FraudReviewOutputSerializer,
            400: FIELD_ERRORS,
            401: UNAUTHENTICATED,
            403: REVIEWER_FORBIDDEN,
            404: REVIEW_NOT_FOUND,
            409: _error("Nothing to decide: already decided, expired or cancelled."),
            429: THROTTLED,
        },
    )
    def post(self, request: Request, review_id: str) -> Response:
        review = review_get(review_id=review_id)
        decision = _decision(request)
        _decide(request, review_order(review), decision)
        review = review_get(review_id=review.pk)
        return Response(FraudReviewOutputSerializer(review, context={"request": request}).data)


class RunDetailApi(APIView):
    @extend_schema(
        operation_id="runs_retrieve",
        summary="Get the workflow run of one of your orders, with its steps and waits",
        responses={
            200: RunOutputSerializer,
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
            404: _error("No run of your orders with that id."),
            429: THROTTLED,
        },
    )
    def get(self, request: Request, run_id: str) -> Response:
        run = run_get_for(client=request_client(request), run_id=run_id)
        return Response(RunOutputSerializer(run).data)
