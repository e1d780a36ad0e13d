"""The database as the settings configure it."""

import pytest
from django.db import connection

from tests.support.requirements import skip_or_fail
from workflows.models import RunStatus, WorkflowRun


@pytest.mark.postgres
@pytest.mark.django_db
def test_postgresql_binds_parameters_on_the_server_and_prepares_repeated_statements():
    """psycopg's client-side binding quotes every parameter in Python and the server then
    parses and plans every statement: a fifth of the order path's CPU (settings.py)."""
    if connection.vendor != "postgresql":
        skip_or_fail("postgres", "server-side binding is PostgreSQL's (DATABASE_URL)")
    for _ in range(6):  # psycopg prepares a statement on its fifth run on a connection
        list(WorkflowRun.objects.filter(status=RunStatus.PENDING)[:1])
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [statement for (statement,) in cursor.fetchall()]
    assert any('FROM "workflows_workflowrun"' in s and "$1" in s for s in prepared), prepared
