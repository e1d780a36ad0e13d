"""The webhook endpoints API, per client like the orders API: another client's endpoint
is a 404. Views translate HTTP to `orders.client_webhooks.services` (writes) and
`orders.client_webhooks.selectors` (reads); the URL and event rules live in the domain."""

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orders.api.auth import request_client
from orders.api.views import FORBIDDEN

from ..models import WebhookEndpoint
from ..selectors import webhook_endpoint_get_for, webhook_endpoint_list_for
from ..services import (
    webhook_endpoint_create,
    webhook_endpoint_delete,
    webhook_endpoint_rotate_secret,
)
from .serializers import (
    WebhookEndpointCreateInputSerializer,
    WebhookEndpointOutputSerializer,
    WebhookEndpointSecretOutputSerializer,
)

FIELD_ERRORS = OpenApiResponse(
    response=OpenApiTypes.OBJECT,
    description="Invalid input: each field maps to its list of error messages.",
)
NOT_FOUND = OpenApiResponse(description="No webhook endpoint of yours with that id.")


def _with_secret(endpoint: WebhookEndpoint, code: int) -> Response:
    # The one response that holds the secret: no cache may keep it.
    response = Response(WebhookEndpointSecretOutputSerializer(endpoint).data, status=code)
    response["Cache-Control"] = "no-store"
    return response


class WebhookEndpointListCreateApi(APIView):

    @extend_schema(
        operation_id="webhooks_list",
        summary="List your webhook endpoints (without their secrets)",
        responses={200: WebhookEndpointOutputSerializer(many=True), 403: FORBIDDEN},
    )
    def get(self, request: Request) -> Response:
        endpoints = webhook_endpoint_list_for(client=request_client(request))
        return Response(WebhookEndpointOutputSerializer(endpoints, many=True).data)

    @extend_schema(
        operation_id="webhooks_create",
        summary="Register a webhook endpoint",
        description="Answers with the endpoint's signing `secret`, shown only this once.",
        request=WebhookEndpointCreateInputSerializer,
        responses={
            201: WebhookEndpointSecretOutputSerializer,
            400: FIELD_ERRORS,
            403: FORBIDDEN,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = WebhookEndpointCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            endpoint = webhook_endpoint_create(
                client=request_client(request), **serializer.validated_data
            )
        except DjangoValidationError as exc:
            raise exceptions.ValidationError(exc.message_dict) from None
        return _with_secret(endpoint, status.HTTP_201_CREATED)


class WebhookEndpointDetailApi(APIView):
    @extend_schema(
        operation_id="webhooks_delete",
        summary="Delete a webhook endpoint (its pending deliveries stop)",
        responses={204: None, 403: FORBIDDEN, 404: NOT_FOUND},
    )
    def delete(self, request: Request, endpoint_id: str) -> Response:
        endpoint = webhook_endpoint_get_for(client=request_client(request), endpoint_id=endpoint_id)
        webhook_endpoint_delete(endpoint=endpoint)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookEndpointRotateSecretApi(APIView):
    @extend_schema(
        operation_id="webhooks_rotate_secret",
        summary="Replace a webhook endpoint's secret",
        description="The new secret signs every delivery from now on; it is shown only this once.",
        request=None,
        responses={200: WebhookEndpointSecretOutputSerializer, 403: FORBIDDEN, 404: NOT_FOUND},
    )
    def post(self, request: Request, endpoint_id: str) -> Response:
        endpoint = webhook_endpoint_get_for(client=request_client(request), endpoint_id=endpoint_id)
        return _with_secret(webhook_endpoint_rotate_secret(endpoint=endpoint), status.HTTP_200_OK)
