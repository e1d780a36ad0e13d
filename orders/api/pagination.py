"""The API's pagination: DRF's limit/offset, with a ceiling on `?limit=`."""

from rest_framework import pagination

MAX_PAGE_SIZE = 100


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """A larger `?limit=` gets `MAX_PAGE_SIZE` rows, so that no request serializes a whole
    table."""

    max_limit = MAX_PAGE_SIZE
