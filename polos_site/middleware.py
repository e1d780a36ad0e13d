"""Requests refused before any view sees them."""

from collections.abc import Callable

from django.core.exceptions import BadRequest
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse

NUL = "\x00"


def _nul_in_query(request: HttpRequest) -> bool:
    return any(
        NUL in name or any(NUL in value for value in values) for name, values in request.GET.lists()
    )


def _nul_in_headers(request: HttpRequest) -> bool:
    headers = (v for k, v in request.META.items() if k.startswith("HTTP_") and isinstance(v, str))
    # Cookies as parsed: a quoted value spells a NUL as \000, no NUL byte on the wire.
    cookies = (text for item in request.COOKIES.items() for text in item)
    return any(NUL in text for text in (*headers, *cookies))


class NulRefusalMiddleware:
    """A NUL character means nothing in a URL or a header, and PostgreSQL refuses one
    even in a comparison: whatever looks such a text up (an order id in the API, a
    search or filter of the console or of any admin list, a token, a session cookie)
    would answer 500. So the request is answered here, the same for every door and
    for every view to come: a path holding a NUL names nothing (404), a query string,
    header or cookie holding one is bad input (400). In JSON unless the client prefers HTML,
    as the API documents its errors."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if NUL in request.path_info:
            return self._refuse(request, 404, "Not found.")
        if _nul_in_query(request) or _nul_in_headers(request):
            return self._refuse(
                request, 400, "NUL characters are not allowed in a URL or a header."
            )
        return self.get_response(request)

    @staticmethod
    def _refuse(request: HttpRequest, status: int, detail: str) -> HttpResponse:
        if request.get_preferred_type(["application/json", "text/html"]) == "text/html":
            # Django's own 404 and 400 pages (handler404, handler400).
            raise Http404(detail) if status == 404 else BadRequest(detail)
        return JsonResponse({"detail": detail}, status=status)
