"""Hot-path reads whose SQL is compiled once: `Model.objects.filter(field=value)`.

Django compiles a queryset's SQL on every evaluation, and for a one-row read that is most
of the cost: reading one row of a 34-column model by a unique field took 0.56 ms of CPU,
0.45 of it building the SELECT; a worker reads a run, its history and the rows its steps
work on several times per run (`python -m bench.call_costs`). A `CompiledRead` asks the
ORM for that SQL and its column converters once per database, then executes it with each
new value and builds the instances as the ORM would (`Model.from_db`): same columns, same
conversions, same instances, at about a fifth of the CPU.

An exact match on one field (`pk`, a concrete field or a foreign key's attname), plus
constant conditions and an order if wanted; no related objects, no annotations: anything
else stays an ordinary queryset.

Runnable in `manage.py shell`:

```python
from workflows.engine.compiled_reads import CompiledRead
from workflows.models import WorkflowRun

run_by_id = CompiledRead(WorkflowRun, "pk")
run = WorkflowRun.objects.first()
assert run_by_id.get(run.pk) == run
```
"""

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Generic, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Field, Model, Q

M = TypeVar("M", bound=Model)

# A value of the field's type to compile the SQL with (integers for the rest).
_STAND_INS: dict[str, Any] = {"UUIDField": uuid.UUID(int=0), "CharField": "", "TextField": ""}


@dataclass(frozen=True)
class _Compiled:
    sql: str
    params: list[Any]  # the constant ones, after the value's
    attnames: list[str]
    converters: list[tuple[int, list[Any], Any]]  # column, its converters, its expression


class CompiledRead(Generic[M]):
    """`model.objects.filter(<field>=value)` (and `where`, in `order_by`'s order), its SQL
    compiled once per database."""

    def __init__(
        self, model: type[M], field: str, *, where: Q | None = None, order_by: Sequence[str] = ()
    ) -> None:
        self.model = model
        self.field = field
        self.where = where or Q()
        self.order_by = tuple(order_by)
        self._compiled: dict[tuple[str, bool], _Compiled] = {}
        self._lock = threading.Lock()

    @cached_property
    def _value_field(self) -> "Field[Any, Any]":
        # Looked up on first use: a module of models may make one before its relations
        # are resolved. A foreign key's values are those of the field it points at.
        target = (
            self.model._meta.pk if self.field == "pk" else self.model._meta.get_field(self.field)
        )
        assert isinstance(target, Field)
        return getattr(target, "target_field", target)

    def _compile(self, alias: str, *, pk_only: bool) -> _Compiled:
        # The value compiled in is a stand-in: the first parameter (the first condition,
        # and plain columns take none), replaced on each read.
        connection = connections[alias]
        stand_in = _STAND_INS.get(self._value_field.get_internal_type(), 0)
        rows = (
            self.model._default_manager.using(alias)
            .filter(**{self.field: stand_in})
            .filter(self.where)
            .order_by(*self.order_by)
        )
        if pk_only:  # for `exists`: no columns to send or convert
            rows = rows.only("pk")
        compiler = rows.query.get_compiler(using=alias)
        sql, params = compiler.as_sql()
        expected = self._value_field.get_db_prep_value(stand_in, connection, prepared=False)
        if not params or params[0] != expected:
            raise ValueError(f"{self.model.__name__}.{self.field}: not the first parameter")
        columns = [column for column, _, _ in compiler.select]
        return _Compiled(
            sql=sql,
            params=list(params[1:]),
            attnames=[column.target.attname for column in columns],
            converters=[
                (position, convs, expression)
                for position, (convs, expression) in compiler.get_converters(columns).items()
            ],
        )

    def _compiled_for(self, alias: str, *, pk_only: bool = False) -> _Compiled:
        compiled = self._compiled.get((alias, pk_only))
        if compiled is None:
            with self._lock:
                compiled = self._compiled.setdefault(
                    (alias, pk_only), self._compile(alias, pk_only=pk_only)
                )
        return compiled

    def _fetch(self, value: Any, using: str, *, one: bool, pk_only: bool = False) -> list[Any]:
        connection = connections[using]
        compiled = self._compiled_for(using, pk_only=pk_only)
        param = self._value_field.get_db_prep_value(value, connection, prepared=False)
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, [param, *compiled.params])
            rows: list[Any] = cursor.fetchmany(1) if one else cursor.fetchall()
        return rows

    def _rows(self, value: Any, using: str, *, one: bool) -> list[M]:
        connection = connections[using]
        compiled = self._compiled_for(using)
        rows = self._fetch(value, using, one=one)
        instances = []
        for row in rows:
            values = list(row)
            for position, convs, expression in compiled.converters:
                for converter in convs:
                    values[position] = converter(values[position], expression, connection)
            instances.append(self.model.from_db(using, compiled.attnames, values))
        return instances

    def all(self, value: Any, *, using: str = DEFAULT_DB_ALIAS) -> list[M]:
        """Every row whose field is `value`."""
        return self._rows(value, using, one=False)

    def first(self, value: Any, *, using: str = DEFAULT_DB_ALIAS) -> M | None:
        """The first row whose field is `value`, or None."""
        found = self._rows(value, using, one=True)
        return found[0] if found else None

    def exists(self, value: Any, *, using: str = DEFAULT_DB_ALIAS) -> bool:
        """Whether a row's field is `value` (reads its primary key only)."""
        return bool(self._fetch(value, using, one=True, pk_only=True))

    def get(self, value: Any, *, using: str = DEFAULT_DB_ALIAS) -> M:
        """The row whose field is `value`; `model.DoesNotExist` if none (the field is
        expected to be unique: a second row is not looked for)."""
        found = self.first(value, using=using)
        if found is None:
            raise self.model.DoesNotExist(  # type: ignore[attr-defined]
                f"{self.model._meta.object_name} matching {self.field}={value!r} does not exist."
            )
        return found

    def refresh(self, instance: M) -> None:
        """`instance.refresh_from_db()` through the compiled read (`field` must be "pk")."""
        fresh = self.get(instance.pk, using=instance._state.db or DEFAULT_DB_ALIAS)
        for field in self.model._meta.concrete_fields:
            setattr(instance, field.attname, getattr(fresh, field.attname))
        # Related objects are read again, as after `refresh_from_db`.
        instance._state.fields_cache.clear()
        instance.__dict__.pop("_prefetched_objects_cache", None)
