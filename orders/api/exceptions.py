"""The API's answer to the domain's errors: a selector's `NotFound` is a 404, as DRF
answers its own (`{"detail": ...}`). Set as `REST_FRAMEWORK["EXCEPTION_HANDLER"]`."""

from typing import Any

from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from orders.errors import NotFound


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, NotFound):
        exc = exceptions.NotFound(str(exc))
    return drf_exception_handler(exc, context)
