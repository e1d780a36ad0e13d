"""The site's authentication backend: Django's `ModelBackend`, with a request's first
permission check answered by one small query."""

from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection


class OneQueryPermissionBackend(ModelBackend):
    """Django's `ModelBackend`, except that a user's first permission check on a request
    is one query for that permission.

    Django answers any check by loading every permission of the user and of its groups
    (two joined querysets, built anew each time) and caching the set on the user object
    for the request. An API request checks once, and that load was a fifth of an intake
    request's CPU (bench/README.md, "Eighth pass"): 1.0 ms on SQLite and 1.7 on
    PostgreSQL against 0.06 and 0.16 for the query below. The second check on the same
    user object loads and caches the set as Django does, for pages that check dozens of
    times (the admin). Nothing outlives the request's user object: a revoked permission
    stops working at the next request, as before. Inactive users, superusers and object
    permissions are Django's.
    """

    def has_perm(self, user_obj: Any, perm: str, obj: Any = None) -> bool:
        if (
            obj is not None
            or hasattr(user_obj, "_perm_cache")
            or getattr(user_obj, "_one_permission_checked", False)
            or not user_obj.is_active
            or user_obj.is_anonymous
            or user_obj.is_superuser
        ):
            return super().has_perm(user_obj, perm, obj=obj)
        user_obj._one_permission_checked = True
        app_label, _, codename = perm.partition(".")
        sql = _PERMISSION_HELD_SQL.get(connection.vendor)
        if sql is None:
            sql = _PERMISSION_HELD_SQL[connection.vendor] = _permission_held_sql(
                connection.ops.quote_name
            )
        with connection.cursor() as cursor:
            cursor.execute(sql, [app_label, codename, user_obj.pk, user_obj.pk])
            return cursor.fetchone() is not None


# Per database vendor: how it quotes names.
_PERMISSION_HELD_SQL: dict[str, str] = {}


def _permission_held_sql(quote: Callable[[str], str]) -> str:
    """Whether the user (parameters 3 and 4) holds the permission (app label and codename,
    parameters 1 and 2) itself or through a group: the tables and columns of the auth
    models, as Django's own queries name them."""

    def column(model: Any, name: str) -> str:
        return f"{quote(model._meta.db_table)}.{quote(model._meta.get_field(name).column)}"

    def through(field: Any) -> tuple[str, str, str]:
        """A many-to-many field's table, its column to the field's model, to the other."""
        table = quote(field.remote_field.through._meta.db_table)
        return (
            table,
            f"{table}.{quote(field.m2m_column_name())}",
            f"{table}.{quote(field.m2m_reverse_name())}",
        )

    user = get_user_model()
    user_permissions, user_of_permission, permission_of_user = through(
        user._meta.get_field("user_permissions")
    )
    user_groups, user_of_group, group_of_user = through(user._meta.get_field("groups"))
    group_permissions, group_of_permission, permission_of_group = through(
        Group._meta.get_field("permissions")
    )
    permission_table = quote(Permission._meta.db_table)
    content_type_table = quote(ContentType._meta.db_table)
    permission_id = column(Permission, "id")
    return (
        f"SELECT 1 FROM {permission_table} INNER JOIN {content_type_table} "
        f"ON {column(Permission, 'content_type')} = {column(ContentType, 'id')} "
        f"WHERE {column(ContentType, 'app_label')} = %s AND {column(Permission, 'codename')} = %s "
        f"AND ({permission_id} IN (SELECT {permission_of_user} FROM {user_permissions} "
        f"WHERE {user_of_permission} = %s) "
        f"OR {permission_id} IN (SELECT {permission_of_group} FROM {group_permissions} "
        f"INNER JOIN {user_groups} ON {group_of_permission} = {group_of_user} "
        f"WHERE {user_of_group} = %s)) LIMIT 1"
    )
