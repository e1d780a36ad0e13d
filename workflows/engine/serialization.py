"""Turning step outputs into JSON and back into the types the workflow code expects."""

import functools
import importlib
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic_core import PydanticSerializationError
from pydantic_core import to_jsonable_python as to_jsonable_python  # `context` uses it

from workflows.engine.errors import StepOutputError

_NO_ANNOTATION = object()


@functools.lru_cache(maxsize=1024)
def _cached_adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def _adapter(annotation: Any) -> TypeAdapter[Any]:
    """Building a TypeAdapter costs more than using it: keep one per annotation."""
    try:
        return _cached_adapter(annotation)
    except TypeError:  # an unhashable annotation
        return TypeAdapter(annotation)


def type_path(value: Any) -> str:
    """Import path of a pydantic model instance's class, so replay can rebuild it."""
    if isinstance(value, BaseModel):
        cls = type(value)
        return f"{cls.__module__}:{cls.__qualname__}"
    return ""


def dump(key: str, value: Any, annotation: Any = _NO_ANNOTATION) -> Any:
    """JSON-ready form of a step's output; a clear error naming the step otherwise."""
    try:
        if annotation is not _NO_ANNOTATION and annotation is not None:
            return _adapter(annotation).dump_python(value, mode="json")
        return to_jsonable_python(value)
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise StepOutputError(
            f"Step {key!r} returned a {type(value).__name__}, which cannot be stored as JSON "
            f"(return a pydantic model, a dict, a list, a string, a number or None): {exc}"
        ) from exc


def load(data: Any, annotation: Any = _NO_ANNOTATION, stored_type: str = "") -> Any:
    """Rebuild a stored output, preferring the caller's annotation over the stored type."""
    if annotation is not _NO_ANNOTATION and annotation is not None:
        return _adapter(annotation).validate_python(data)
    if stored_type and data is not None:
        module_name, _, qualname = stored_type.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError):
            return data
        if isinstance(target, type) and issubclass(target, BaseModel):
            return target.model_validate(data)
    return data
