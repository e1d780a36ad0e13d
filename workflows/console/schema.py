"""The console's tables of a pydantic model's fields and the example payload of its
start form, both read from the model's JSON schema. Nothing here knows any workflow:
a workflow's input model may carry its own example (`json_schema_extra={"examples":
[...]}` on the model, or `examples` on a field).
"""

import json
from dataclasses import dataclass
from typing import Any

from django.utils import timezone


@dataclass
class SchemaField:
    name: str
    type: str
    required: bool
    default: str
    description: str
    constraints: str


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the schema behind a `$ref`, its name) — or (node, "")."""
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        return defs.get(name, {}), name
    return node, ""


def _type_text(node: dict[str, Any], defs: dict[str, Any]) -> str:
    _, ref_name = _resolve(node, defs)
    if ref_name:
        return ref_name
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in node:
            parts = [_type_text(n, defs) for n in node[combinator] if isinstance(n, dict)]
            return " | ".join(dict.fromkeys(p for p in parts if p))
    if "enum" in node:
        return "enum"
    if "const" in node:
        return json.dumps(node["const"])
    kind = node.get("type")
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    if kind == "array":
        items = node.get("items")
        return f"array of {_type_text(items, defs)}" if isinstance(items, dict) else "array"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"object of {_type_text(node['additionalProperties'], defs)}"
    if kind and node.get("format"):
        return f"{kind} ({node['format']})"
    return str(kind or "any")


_CONSTRAINTS = (
    ("exclusiveMinimum", "> {}"),
    ("minimum", "≥ {}"),
    ("exclusiveMaximum", "< {}"),
    ("maximum", "≤ {}"),
    ("minLength", "min length {}"),
    ("maxLength", "max length {}"),
    ("minItems", "min items {}"),
    ("maxItems", "max items {}"),
    ("pattern", "matches {}"),
)


def _constraints_text(node: dict[str, Any], defs: dict[str, Any]) -> str:
    parts = []
    nodes = [node, *(n for n in node.get("anyOf", []) if isinstance(n, dict))]
    for n in nodes:
        n, _ = _resolve(n, defs)
        for key, template in _CONSTRAINTS:
            if key in n:
                value = n[key]
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                parts.append(template.format(value))
        if "enum" in n:
            parts.append("one of " + ", ".join(json.dumps(v) for v in n["enum"]))
    return "; ".join(dict.fromkeys(parts))


def schema_fields(model: Any) -> list[SchemaField]:
    """The top-level fields of a pydantic model, from its JSON schema, for a table."""
    if model is None:
        return []
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    fields = []
    for name, node in (schema.get("properties") or {}).items():
        resolved, _ = _resolve(node, defs)
        fields.append(
            SchemaField(
                name=name,
                type=_type_text(node, defs),
                required=name in required,
                default=json.dumps(node["default"], default=str) if "default" in node else "",
                description=str(node.get("description") or resolved.get("description") or ""),
                constraints=_constraints_text(node, defs),
            )
        )
    return fields


def _example_value(name: str, node: dict[str, Any], defs: dict[str, Any], depth: int) -> Any:
    if "default" in node:
        return node["default"]
    if node.get("examples"):
        return node["examples"][0]
    target, ref_name = _resolve(node, defs)
    if ref_name:
        return _example_object(target, defs, depth + 1)
    if "enum" in node:
        return node["enum"][0]
    if "const" in node:
        return node["const"]
    for combinator in ("anyOf", "oneOf"):
        options = [n for n in node.get(combinator, []) if isinstance(n, dict)]
        options = [n for n in options if n.get("type") != "null"] or options
        if options:
            return _example_value(name, options[0], defs, depth)
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    lowered = name.lower()
    if kind == "string":
        fmt = node.get("format", "")
        if fmt == "email" or "email" in lowered:
            return "someone@example.com"
        if fmt == "date-time":
            return timezone.now().replace(microsecond=0).isoformat()
        if fmt == "date":
            return timezone.now().date().isoformat()
        if fmt == "uuid":
            return "00000000-0000-0000-0000-000000000000"
        if fmt in ("uri", "url"):
            return "https://example.com/"
        if lowered.endswith("_id") or lowered == "id":
            stem = lowered.removesuffix("_id").removesuffix("id").strip("_") or "item"
            return f"{stem}_{timezone.now():%m%d%H%M%S}"
        return node.get("title") or name
    if kind in ("number", "integer"):
        low = node.get("minimum", node.get("exclusiveMinimum"))
        high = node.get("maximum", node.get("exclusiveMaximum"))
        value: float = 49.99 if kind == "number" else 1
        if low is not None and value <= low:
            value = low + 1
        if high is not None and value >= high:
            value = low if low is not None and "minimum" in node else high - 1
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return False
    if kind == "array":
        items = node.get("items")
        return [_example_value(name, items, defs, depth + 1)] if isinstance(items, dict) else []
    if kind == "object":
        return _example_object(node, defs, depth + 1) if node.get("properties") else {}
    return None


def _example_object(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    if depth > 4:
        return {}
    return {
        name: _example_value(name, node, defs, depth)
        for name, node in (schema.get("properties") or {}).items()
        if isinstance(node, dict)
    }


def schema_example(model: Any) -> dict[str, Any]:
    """An example payload for a pydantic model: the model's own first example if its
    schema has one (pydantic's `json_schema_extra={"examples": [...]}`), else built
    field by field from defaults and examples where the schema has them, and plausible
    values by type and format elsewhere."""
    schema = model.model_json_schema()
    examples = schema.get("examples")
    if isinstance(examples, list) and examples and isinstance(examples[0], dict):
        example: dict[str, Any] = examples[0]
        return example
    return _example_object(schema, schema.get("$defs", {}))
