"""Hot-path reads and writes whose SQL is compiled once: `Model.objects.filter(field=value)`,
`Model.objects.filter(...).update(field=value, ...)` and a new row's `save()`.

Django compiles a queryset's SQL on every evaluation, and for a one-row statement that is
most of the cost: reading one row of a 34-column model by a unique field took 0.56 ms of
CPU, 0.45 of it building the SELECT, and a conditional UPDATE of a run by its key 0.36 ms
against 0.04 for executing it; a worker reads and moves a run, its history and its order
several times per run (`python -m bench.call_costs`). These ask the ORM for that SQL, its
column converters and its conditions once per database, then execute it with each new
value (and, for reads, build the instances as the ORM would, `Model.from_db`): same
statements, same conversions, same instances, at a fifth of the CPU or less.

A `CompiledRead` is an exact match on one field (`pk`, a concrete field or a foreign key's
attname), plus constant conditions, constant annotations (set on each instance, as
`annotate` does) and an order if wanted; no related objects. A `CompiledUpdate` matches
exact values of its key fields plus constant conditions, on one table; it compiles the
writing of plain values (an expression goes through the ORM). A `CompiledInsert` writes
every column of a model with an automatic primary key, optionally only while a row of
another table, matched the same way, exists (held until the insert commits): a guard and
its write in one statement. Either write can be `durable` (`workflows.engine.durability`).
Anything else stays an ordinary queryset.

Runnable in `manage.py shell`:

```python
from django.db.models import Q
from django.utils import timezone

from workflows.engine.compiled_queries import CompiledRead, CompiledUpdate
from workflows.models import RunStatus, WorkflowRun

run_by_id = CompiledRead(WorkflowRun, "pk")
run = WorkflowRun.objects.first()
assert run_by_id.get(run.pk) == run

touch_if_pending = CompiledUpdate(WorkflowRun, ["pk"], where=Q(status=RunStatus.PENDING))
touch_if_pending.update(run.pk, updated_at=timezone.now())  # rows written: 0 or 1

from workflows.engine.compiled_queries import CompiledInsert, RowExists
from workflows.models import StepRecord

while_pending = CompiledInsert(
    StepRecord, only_if=RowExists(WorkflowRun, ["pk"], Q(status=RunStatus.PENDING))
)
step = StepRecord(run=run, key="note", position=10_000, started_at=timezone.now(),
                  finished_at=timezone.now())
while_pending.insert(step, run.pk)  # True (and step.pk set) only if the run is pending
```
"""

import threading
import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Generic, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import Field, Model, Q, QuerySet
from django.db.models.expressions import BaseExpression

from workflows.engine.durability import durable_atomic, durable_condition, durable_statement

M = TypeVar("M", bound=Model)
C = TypeVar("C")

# A value of the field's type to compile the SQL with (integers for the rest).
_STAND_INS: dict[str, Any] = {"UUIDField": uuid.UUID(int=0), "CharField": "", "TextField": ""}


def _stand_in(field: "Field[Any, Any]") -> Any:
    return _STAND_INS.get(field.get_internal_type(), 0)


def _stand_ins_lead(
    params: Sequence[Any], fields: Sequence["Field[Any, Any]"], connection: Any, what: str
) -> int:
    """Check that the compiled statement's first parameters are the stand-ins of `fields`
    (the values each call replaces); returns how many they are."""
    expected = [f.get_db_prep_value(_stand_in(f), connection, prepared=False) for f in fields]
    if list(params[: len(expected)]) != expected:
        raise ValueError(f"{what}: not the first parameters")
    return len(expected)


class _Built(Generic[C]):
    """What a compiled query built, per key (a database alias, and what varies): built
    once, under a lock, however many threads ask at once."""

    def __init__(self) -> None:
        self._built: dict[Hashable, C] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], C]) -> C:
        built = self._built.get(key)
        if built is None:
            with self._lock:
                built = self._built.get(key)
                if built is None:
                    built = self._built[key] = build()
        return built


@dataclass(frozen=True)
class _Compiled:
    sql: str
    params_before: list[Any]  # the constant ones before the value's (the annotations')
    params: list[Any]  # the constant ones, after the value's
    attnames: list[str]  # the model's columns, first in each row
    annotations: list[str]  # the annotations' columns, after them
    converters: list[tuple[int, list[Any], Any]]  # column, its converters, its expression


def _value_field(model: type[Model], name: str) -> "Field[Any, Any]":
    """The field whose values `name` is matched with. Looked up on first use: a module of
    models may make a compiled query before its relations are resolved. A foreign key's
    values are those of the field it points at."""
    target = model._meta.pk if name == "pk" else model._meta.get_field(name)
    assert isinstance(target, Field)
    return getattr(target, "target_field", target)


class CompiledRead(Generic[M]):
    """`model.objects.filter(<field>=value)` (and `where`, `annotate(**annotations)`, in
    `order_by`'s order), its SQL compiled once per database."""

    def __init__(
        self,
        model: type[M],
        field: str,
        *,
        where: Q | None = None,
        annotations: Mapping[str, BaseExpression] | None = None,
        order_by: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.field = field
        self.where = where or Q()
        self.annotations = dict(annotations or {})
        self.order_by = tuple(order_by)
        self._compiled: _Built[_Compiled] = _Built()

    @cached_property
    def _value_field(self) -> "Field[Any, Any]":
        return _value_field(self.model, self.field)

    def _compile(self, alias: str, *, pk_only: bool) -> _Compiled:
        # The value compiled in is a stand-in: the first parameter of the first condition,
        # after the selected columns' (plain columns take none, annotations may), replaced
        # on each read.
        rows = (
            self.model._default_manager.using(alias)
            .filter(**{self.field: _stand_in(self._value_field)})
            .filter(self.where)
            .order_by(*self.order_by)
        )
        if pk_only:  # for `exists`: no columns to send or convert
            rows = rows.only("pk")
        else:
            rows = rows.annotate(**self.annotations)
        compiler = rows.query.get_compiler(using=alias)
        sql, params = compiler.as_sql()
        what = f"{self.model.__name__}.{self.field}"
        before = sum(len(column_params) for _, (_, column_params), _ in compiler.select)
        _stand_ins_lead(params[before:], [self._value_field], connections[alias], what)
        selected = [column for column, _, _ in compiler.select]
        annotated = compiler.annotation_col_map or {}
        model_columns = len(selected) - len(annotated)
        if sorted(annotated.values()) != list(range(model_columns, len(selected))):
            raise ValueError(f"{what}: annotations must follow the model's columns")
        return _Compiled(
            sql=sql,
            params_before=list(params[:before]),
            params=list(params[before + 1 :]),
            attnames=[column.target.attname for column in selected[:model_columns]],
            annotations=sorted(annotated, key=annotated.__getitem__),
            converters=[
                (position, convs, expression)
                for position, (convs, expression) in compiler.get_converters(selected).items()
            ],
        )

    def _compiled_for(self, alias: str, *, pk_only: bool = False) -> _Compiled:
        return self._compiled.get((alias, pk_only), lambda: self._compile(alias, pk_only=pk_only))

    def _fetch(self, compiled: _Compiled, value: Any, using: str, *, one: bool) -> list[Any]:
        connection = connections[using]
        param = self._value_field.get_db_prep_value(value, connection, prepared=False)
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, [*compiled.params_before, param, *compiled.params])
            rows: list[Any] = cursor.fetchmany(1) if one else cursor.fetchall()
        return rows

    def _rows(self, value: Any, using: str, *, one: bool) -> list[M]:
        connection = connections[using]
        compiled = self._compiled_for(using)
        rows = self._fetch(compiled, value, using, one=one)
        instances = []
        columns = len(compiled.attnames)
        for row in rows:
            values = list(row)
            for position, convs, expression in compiled.converters:
                for converter in convs:
                    values[position] = converter(values[position], expression, connection)
            instance = self.model.from_db(using, compiled.attnames, values[:columns])
            for name, value in zip(compiled.annotations, values[columns:], strict=True):
                setattr(instance, name, value)
            instances.append(instance)
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
        compiled = self._compiled_for(using, pk_only=True)
        return bool(self._fetch(compiled, value, using, one=True))

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


class _KeyedRows:
    """Rows of one table matched by exact values of `keys` and constant conditions
    `where`: as a queryset, and compiled once into a WHERE whose first parameters are
    the keys' values."""

    def __init__(self, model: type[Model], keys: Sequence[str], where: Q | None) -> None:
        self.model = model
        self.keys = tuple(keys)
        self.where = where or Q()

    @cached_property
    def key_fields(self) -> list["Field[Any, Any]"]:
        return [_value_field(self.model, key) for key in self.keys]

    def _check(self, key_values: Sequence[Any]) -> None:
        if len(key_values) != len(self.keys):
            raise TypeError(f"expected {len(self.keys)} key values, got {len(key_values)}")

    def queryset(self, alias: str, key_values: Sequence[Any]) -> "QuerySet[Any]":
        """One filter per key, in the keys' order (the compiled WHERE's parameters lead
        with them), then `where`."""
        self._check(key_values)
        rows = self.model._default_manager.using(alias).all()
        for key, value in zip(self.keys, key_values, strict=True):
            rows = rows.filter(**{key: value})
        return rows.filter(self.where)

    def compile_where(self, alias: str) -> tuple[str, list[Any]]:
        """The WHERE's SQL, and its constant parameters (after the keys')."""
        query = self.queryset(alias, [_stand_in(field) for field in self.key_fields]).query
        if sum(1 for count in query.alias_refcount.values() if count) != 1:  # no join
            raise ValueError(f"{self.model.__name__}: a compiled statement reads one table only")
        where_sql, where_params = query.get_compiler(using=alias).compile(query.where)
        what = f"{self.model.__name__}.{self.keys}"
        keys = _stand_ins_lead(where_params, self.key_fields, connections[alias], what)
        return where_sql, list(where_params[keys:])

    def key_params(self, key_values: Sequence[Any], connection: Any) -> list[Any]:
        self._check(key_values)
        return [
            field.get_db_prep_value(value, connection, prepared=False)
            for field, value in zip(self.key_fields, key_values, strict=True)
        ]


def _durable_where(where_sql: str, connection: Any, durable: bool) -> str:
    """`where_sql`, and what makes its statement's commit durable where the statement can
    say so (`workflows.engine.durability`)."""
    condition = durable_condition(connection.vendor) if durable else None
    if not condition:
        return where_sql
    return f"({where_sql}) AND {condition}" if where_sql else condition


@dataclass(frozen=True)
class _CompiledWrite:
    sql: str
    fields: list["Field[Any, Any]"]  # what the SET writes, in its order
    where_params: list[Any]  # the constant ones, after the keys'


class CompiledUpdate(Generic[M]):
    """`model.objects.filter(<key>=value, ..., where).update(**values)`, its SQL compiled
    once per database and set of fields written. Returns the rows written, as `update`
    does.

    `durable=True`: a write that must be on disk before something leaves, in a worker
    whose other commits are not (`workflows.engine.durability`), committed on its own in
    one statement; on SQLite it must not run inside a transaction."""

    def __init__(
        self, model: type[M], keys: Sequence[str], *, where: Q | None = None, durable: bool = False
    ) -> None:
        self.model = model
        self.durable = durable
        self._rows = _KeyedRows(model, keys, where)
        self._compiled: _Built[_CompiledWrite] = _Built()

    def _compile(self, alias: str, names: tuple[str, ...]) -> _CompiledWrite:
        connection = connections[alias]
        where_sql, where_params = self._rows.compile_where(alias)
        fields: list[Field[Any, Any]] = []
        for name in names:
            field = self.model._meta.get_field(name)
            if not isinstance(field, Field) or not field.column or field.primary_key:
                raise ValueError(f"{self.model.__name__}.{name}: not a column to write")
            if hasattr(field, "get_placeholder"):  # e.g. a geometry: Django's SQL wraps it
                raise ValueError(f"{self.model.__name__}.{name}: not a plain column")
            fields.append(field)
        quote = connection.ops.quote_name
        assignments = ", ".join(f"{quote(str(field.column))} = %s" for field in fields)
        where_sql = _durable_where(where_sql, connection, self.durable)
        return _CompiledWrite(
            sql=f"UPDATE {quote(self.model._meta.db_table)} SET {assignments} WHERE {where_sql}",
            fields=fields,
            where_params=where_params,
        )

    def update(self, *key_values: Any, using: str = DEFAULT_DB_ALIAS, **values: Any) -> int:
        """Write `values` to the rows whose keys are `key_values` (in the order the keys
        were given) and that meet `where`; returns how many were written. Values that
        are expressions (`F("n") + 1`) are written through the ORM's own `update`."""
        if any(hasattr(value, "resolve_expression") for value in values.values()):
            # An expression's SQL is its own: the ORM compiles it, as it always would.
            with durable_atomic(using) if self.durable else nullcontext():
                return self._rows.queryset(using, key_values).update(**values)
        connection = connections[using]
        key_params = self._rows.key_params(key_values, connection)
        names = tuple(values)
        compiled = self._compiled.get((using, names), lambda: self._compile(using, names))
        params = []
        for field, value in zip(compiled.fields, values.values(), strict=True):
            if field.remote_field and hasattr(value, "prepare_database_save"):
                value = value.prepare_database_save(field)
            params.append(field.get_db_prep_save(value, connection))
        with (
            durable_statement(using) if self.durable else nullcontext(),
            transaction.mark_for_rollback_on_error(using),
            connection.cursor() as cursor,
        ):
            cursor.execute(compiled.sql, [*params, *key_params, *compiled.where_params])
            written: int = cursor.rowcount
        return written


@dataclass(frozen=True)
class RowExists:
    """The condition of a `CompiledInsert`: a row of `model` whose `keys` equal the
    values the insert is given and that meets `where`."""

    model: type[Model]
    keys: Sequence[str]
    where: Q | None = None


@dataclass(frozen=True)
class _CompiledInsert:
    sql: str
    fields: list["Field[Any, Any]"]  # the columns written, in their order
    # Those whose value `pre_save` decides (`auto_now_add`, ...); the others are read.
    pre_saved: list[bool]
    where_params: list[Any]  # the condition's constant ones, after its keys'
    returning: bool  # the primary key comes back as a row, else as the cursor's lastrowid


class CompiledInsert(Generic[M]):
    """A new row of `model` (`instance.save()` of a new instance), in one INSERT compiled
    once per database, and its primary key read back from it.

    `only_if=RowExists(...)`: the row goes in only if that other row exists, and that row
    is locked (FOR UPDATE, where the engine has row locks; SQLite has one writer) until
    the insert commits: a transaction that holds it is waited for and its write seen, and
    one that comes after sees this row. `durable=True`: as `CompiledUpdate`'s."""

    def __init__(
        self, model: type[M], *, only_if: RowExists | None = None, durable: bool = False
    ) -> None:
        self.model = model
        self.durable = durable
        self._guard = _KeyedRows(only_if.model, only_if.keys, only_if.where) if only_if else None
        self._compiled: _Built[_CompiledInsert] = _Built()

    def _compile(self, alias: str) -> _CompiledInsert:
        connection = connections[alias]
        quote = connection.ops.quote_name
        meta = self.model._meta
        pk = meta.pk
        assert pk is not None and pk is meta.auto_field, "an automatic primary key"
        fields = [f for f in meta.concrete_fields if f is not pk]
        columns = ", ".join(quote(str(f.column)) for f in fields)
        values = ", ".join(["%s"] * len(fields))
        # SQLite's RETURNING costs the statement a sixth more than its lastrowid.
        returning = connection.vendor != "sqlite"
        returning_sql = connection.ops.return_insert_columns([pk])[0] if returning else ""
        where_sql, where_params = "", list[Any]()
        if self._guard is not None:
            guard_sql, where_params = self._guard.compile_where(alias)
            lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
            table = quote(self._guard.model._meta.db_table)
            where_sql = f"EXISTS (SELECT 1 FROM {table} WHERE {guard_sql}{lock})"
        where_sql = _durable_where(where_sql, connection, self.durable)
        rows = f"SELECT {values} WHERE {where_sql}" if where_sql else f"VALUES ({values})"
        return _CompiledInsert(
            sql=f"INSERT INTO {quote(meta.db_table)} ({columns}) {rows} {returning_sql}",
            fields=fields,
            pre_saved=[type(f).pre_save is not Field.pre_save for f in fields],
            where_params=where_params,
            returning=returning,
        )

    def insert(self, instance: M, *key_values: Any, using: str = DEFAULT_DB_ALIAS) -> bool:
        """Insert `instance` (its fields' defaults and `auto_now_add` filled in as `save`
        fills them), if `only_if`'s row whose keys are `key_values` exists; then its
        primary key is set and True returned, else False. A unique constraint's
        violation raises `IntegrityError`, as `save` does."""
        connection = connections[using]
        compiled = self._compiled.get(using, lambda: self._compile(using))
        params = [
            f.get_db_prep_save(
                f.pre_save(instance, True) if pre_saved else getattr(instance, f.attname),
                connection,
            )
            for f, pre_saved in zip(compiled.fields, compiled.pre_saved, strict=True)
        ]
        if self._guard is not None:
            params += self._guard.key_params(key_values, connection)
        elif key_values:
            raise TypeError("key values are for an insert with `only_if`")
        with (
            durable_statement(using) if self.durable else nullcontext(),
            transaction.mark_for_rollback_on_error(using),
            connection.cursor() as cursor,
        ):
            cursor.execute(compiled.sql, [*params, *compiled.where_params])
            if compiled.returning:
                row = cursor.fetchone()
                pk = row[0] if row else None
            else:
                pk = cursor.lastrowid if cursor.rowcount else None
        if pk is None:
            return False
        instance.pk = pk
        instance._state.adding = False
        instance._state.db = using
        return True
