"""Hostile input: schemathesis generates requests from the OpenAPI schema and checks
that the API never answers 5xx and never breaks its own schema."""

import pytest
import schemathesis
from django.contrib.auth.models import Permission
from django.core import signals
from django.db import close_old_connections
from django.test import override_settings
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from orders.roles import intake_client_create
from polos_site.wsgi import application

# No 5xx, and every response as documented (status, content type, body). Whether the
# API also rejects every request the schema forbids (DRF ignores a malformed `offset`,
# for one) is not what this test is about.
SERVER_AND_SCHEMA_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

# Loaded at import, before the test database exists: the throttle counts this request in
# memory, not in the database cache.
with override_settings(
    CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
):
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)


@pytest.fixture(autouse=True)
def keep_test_connection():
    """Calling the WSGI app directly (not through Django's test client) would close the
    test's database connection at the end of each request, as in production."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def auth_header(django_user_model, settings) -> dict[str, str]:
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    django_user_model.objects.create_user("fuzzer", is_staff=True)
    return {"Authorization": f"Token {intake_client_create(username='fuzzer').token}"}


@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_never_fails_or_breaks_its_schema(case, auth_header, queue_capture):
    case.call_and_validate(headers=auth_header, checks=SERVER_AND_SCHEMA_CHECKS)


@pytest.fixture
def reviewer_header(django_user_model, settings, place_order, queue_capture) -> dict[str, str]:
    """A fraud reviewer (the permission granted directly) who is also an intake client,
    with reviews open: its own order's and another client's."""
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    other = django_user_model.objects.create_user("other-client")
    token = intake_client_create(username="reviewing-fuzzer").token
    reviewer = django_user_model.objects.get(username="reviewing-fuzzer")
    reviewer.user_permissions.add(Permission.objects.get(codename="decide_fraud_review"))
    for client in (reviewer, other):
        place_order("2500.00", order_id="ord-1", client=client)
    assert queue_capture.drain() == ["suspended", "suspended"]
    return {"Authorization": f"Token {token}"}


@pytest.mark.django_db(transaction=True)
@schema.include(path_regex=r"^/api/(reviews/|orders/\{order_id\}/review/)").parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_the_reviewer_api_never_fails_or_breaks_its_schema(case, reviewer_header, queue_capture):
    case.call_and_validate(headers=reviewer_header, checks=SERVER_AND_SCHEMA_CHECKS)
