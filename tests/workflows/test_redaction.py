"""Credentials never reach what the engine stores (run and step errors, tracebacks,
step outputs) nor what it logs: a model base URL with userinfo, an upstream error body
echoing an Authorization header, the API key itself."""

import json
import logging

import pytest
from django.contrib.auth.models import User
from django.test import Client
from pydantic import BaseModel

from tests.support.openai_server import reply_error, reply_text, reply_tool_calls
from workflows import WorkflowContext, workflow, workflow_start
from workflows.agents import Agent, ToolContext, tool
from workflows.engine.redaction import RedactingFilter, redact
from workflows.engine.retry import NO_RETRY
from workflows.models import RunStatus, StepRecord, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)

KEY = "sk-test-not-a-real-key"  # the openai_server fixture's OPENAI_API_KEY
BASIC = "dXNlcjpwYXNz"  # base64("user:pass")
SECRETS = ("user:pass", "s3cr3t-pass", KEY, BASIC, "Bearer sk-", "whsec_0123456789abcdef")


def stored_text(run: WorkflowRun) -> str:
    """Everything stored about the run, as one text."""
    run.refresh_from_db()
    steps = list(
        StepRecord.objects.filter(run=run).values(
            "input", "output", "meta", "error", "error_traceback"
        )
    )
    return json.dumps([run.error, run.error_traceback, run.output, steps], default=str)


def trace_page(run: WorkflowRun) -> str:
    admin = User.objects.create_superuser("root", "root@example.com", "root-pass-123")
    client = Client()
    client.force_login(admin)
    response = client.get(f"/runs/{run.id}/")
    assert response.status_code == 200
    return response.content.decode()


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} in {where}"


def run_agent(queue_capture) -> WorkflowRun:
    run = workflow_start("test.agent", {"question": "What is 2 + 3?"})
    queue_capture.drain()
    run.refresh_from_db()
    return run


def test_a_base_url_with_credentials_is_stored_and_logged_masked(
    queue_capture, openai_server, settings, caplog
):
    # The SDK sends the configured key; the URL carries credentials of a proxy.
    settings.OPENAI_BASE_URL = openai_server.base_url.replace("://", "://user:s3cr3t-pass@")
    openai_server.expected_api_key = KEY
    openai_server.script([reply_error(401, f"Incorrect API key provided: {KEY}")])
    caplog.set_level(logging.INFO)

    run = run_agent(queue_capture)

    assert run.status == RunStatus.FAILED
    assert "refused the API key" in run.error and "://***@127.0.0.1" in run.error
    step = StepRecord.objects.get(run=run, key="ask/llm/1")
    assert "://***@127.0.0.1" in step.error
    assert_no_secret(stored_text(run), "the stored run")
    assert_no_secret(trace_page(run), "the trace page")
    assert "refused the API key" in caplog.text  # the failure is logged...
    assert_no_secret(caplog.text, "the logs")  # ...masked


@pytest.mark.parametrize("status", [400, 500])
def test_an_upstream_body_echoing_auth_headers_is_stored_masked(
    queue_capture, openai_server, caplog, status
):
    echo = (
        f"upstream said: Authorization: Basic {BASIC}\r\n"
        f"Proxy-Authorization: Bearer {KEY}; your key {KEY} is invalid"
    )
    openai_server.script([reply_error(status, echo, should_retry=False)] * 2)
    caplog.set_level(logging.INFO)

    run = run_agent(queue_capture)

    assert run.status == RunStatus.FAILED
    assert "upstream said: Authorization: ***" in run.error
    assert "Proxy-Authorization: ***" in run.error
    assert_no_secret(stored_text(run), "the stored run")
    assert_no_secret(trace_page(run), "the trace page")
    assert "upstream said" in caplog.text
    assert_no_secret(caplog.text, "the logs")


class Host(BaseModel):
    host: str


class Page(BaseModel):
    text: str


@tool(description="Fetch a page from a host", retry=NO_RETRY)
async def fetch(ctx: ToolContext, input: Host) -> Page:
    raise ConnectionError(
        f"cannot reach http://user:pass@{input.host}/ (sent Authorization: Basic {BASIC})"
    )


fetcher = Agent(
    id="test.redaction_fetcher",
    provider="openai",
    model="gpt-4o-mini",
    system_prompt="Fetch, then answer.",
    tools=[fetch],
    output_schema=Page,
)


@workflow(id="test.redaction_fetch")
async def fetch_page(ctx: WorkflowContext, payload: Host) -> Page:
    result = await ctx.step.agent_invoke_and_wait("fetch", fetcher.with_input(payload.host))
    return result.result


def test_a_tool_error_with_credentials_is_stored_masked(queue_capture, openai_server):
    # A tool's error is stored in its step and shown to the model: masked in both.
    openai_server.script(
        [reply_tool_calls([("fetch", {"host": "db.local"})]), reply_text('{"text": "none"}')]
    )
    run = workflow_start("test.redaction_fetch", {"host": "db.local"})
    queue_capture.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.error
    tool_step = StepRecord.objects.get(run=run, key="fetch/tool/1/fetch")
    assert "ConnectionError: cannot reach http://***@db.local/" in tool_step.output["error"]
    assert_no_secret(stored_text(run), "the stored run")
    assert_no_secret(json.dumps(openai_server.requests[-1].json), "what the model was sent")


def test_redact_masks_each_kind_of_secret(settings):
    settings.STRIPE_API_KEY = "rk_live_abcdefgh12345678"
    settings.SECRET_KEY = "django-insecure-0123456789"
    text = redact(
        "GET https://alice:pa%40ss@api.example.com/v1 and postgres://bob:pw@db:5432/x "
        '{"authorization": "Bearer abc.def.ghi", "Proxy-Authorization": "Basic Zm9vOmJhcg=="} '
        "token Bearer tok_1234567890 key rk_live_abcdefgh12345678 secret "
        "django-insecure-0123456789 openai sk-proj-ABCDEFGHIJKLMNOPQRST"
    )
    for secret in (
        "alice",
        "pa%40ss",
        "bob:pw",
        "abc.def.ghi",
        "Zm9vOmJhcg",
        "tok_1234567890",
        "rk_live_",
        "django-insecure",
        "sk-proj-",
    ):
        assert secret not in text, (secret, text)
    assert "https://***@api.example.com/v1" in text and "postgres://***@db:5432/x" in text
    # Nothing else is touched.
    assert redact("order ord-1 charged 250.00 USD at https://api.example.com/v1") == (
        "order ord-1 charged 250.00 USD at https://api.example.com/v1"
    )


def test_the_logging_filter_is_on_every_configured_handler():
    handlers = [h for h in logging.getLogger().handlers if not type(h).__module__.startswith("_")]
    configured = [h for h in handlers if type(h).__module__ == "logging"]
    assert configured, "settings' LOGGING configures no handler on the root logger"
    for handler in configured:
        assert any(isinstance(f, RedactingFilter) for f in handler.filters), handler
