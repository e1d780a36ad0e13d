"""The API's JSON parser."""

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.utils.json import strict_constant


class ExactJSONParser(JSONParser):
    """DRF's JSON parser, with numbers that have a fraction or an exponent read as
    `Decimal`: a float would turn 49.999999999999999999 into 50.0 before the order rules
    see it, and 50.00 would be charged. NaN and Infinity stay refused (STRICT_JSON)."""

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        encoding = (parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET
        try:
            # bytes.decode takes text encodings only: no "charset=bz2_codec" bomb.
            text = stream.read().decode(encoding)
        except LookupError:
            raise ParseError(f'Unsupported charset "{encoding}" in the Content-Type.') from None
        except UnicodeDecodeError as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc
        try:
            return json.loads(
                text,
                parse_float=Decimal,
                parse_constant=strict_constant if self.strict else None,
            )
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc
