"""The start-a-run form: a JSON payload checked against the workflow's input model."""

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from django import forms


class WorkflowStartForm(forms.Form):
    """Parses the payload as a JSON object. Whether it fits the workflow's input model
    is decided by `workflow_start`; `add_payload_errors` shows its field errors."""

    payload = forms.CharField(
        label="Payload (JSON)",
        widget=forms.Textarea(attrs={"rows": 14, "spellcheck": "false", "class": "code-input"}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.field_errors: list[tuple[str, str]] = []

    def clean_payload(self) -> dict[str, Any]:
        text = self.cleaned_data["payload"]
        try:
            # Decimals stay exact: 49.99 must not become 49.990000000000002.
            value = json.loads(text, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                "This is not valid JSON: %(msg)s (line %(line)s, column %(col)s).",
                code="invalid_json",
                params={"msg": exc.msg, "line": exc.lineno, "col": exc.colno},
            ) from None
        if not isinstance(value, dict):
            raise forms.ValidationError(
                "The payload must be a JSON object ({...}).", code="not_an_object"
            )
        return value

    def add_payload_errors(self, errors: Sequence[Mapping[str, Any]]) -> None:
        """Show pydantic's field errors (`loc` → `msg`) on the form."""
        for error in errors:
            loc = ".".join(str(part) for part in error.get("loc", ())) or "(payload)"
            self.field_errors.append((loc, str(error.get("msg", "invalid"))))
        self.add_error(
            "payload",
            forms.ValidationError(
                "The payload does not fit the workflow's input model; nothing was started.",
                code="payload_invalid",
            ),
        )

    @property
    def error_fields(self) -> set[str]:
        """Top-level field names that have an error, to mark them in the schema table."""
        return {loc.split(".", 1)[0] for loc, _ in self.field_errors}
