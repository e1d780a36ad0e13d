"""A person's journey through the service, in Debian's Chromium driven by Playwright,
against `live_server` and a real qcluster: start orders from the console's form, watch
them run, read the trace, and approve a large order in the fraud-review queue.

Screenshots are saved under `test-artifacts/browser/`.
"""

import json
import os
import re
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from tests.support.cluster import QCluster
from tests.support.requirements import skip_or_fail

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
TIMEOUT_MS = 30_000

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.qcluster]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        skip_or_fail("chromium", "browser tests need Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread while it lives; the
    # test's own database calls (and the database teardown) are synchronous all the same.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        yield browser
        browser.close()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


@pytest.fixture
def cluster(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    with QCluster(env={"LLM_PROVIDER": "simulated", "PAYMENT_GATEWAY": "simulated"}) as running:
        yield running


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def log_in(page, base_url: str, username: str, password: str, next_path: str) -> None:
    page.goto(f"{base_url}/admin/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(f"{base_url}{next_path}*")


def start_order(page, base_url: str, order_id: str, amount: str) -> str:
    """Fill the start form for order_processing; returns the new run's trace URL."""
    page.goto(f"{base_url}/workflows/order_processing/start/")
    payload = {"order_id": order_id, "customer_id": "cus_browser",
               "customer_email": "grace@example.com", "amount": amount, "currency": "usd"}
    page.fill("textarea[name=payload]", json.dumps(payload, indent=2))
    page.click("button:has-text('Start run')")
    page.wait_for_url(re.compile(r".*/runs/[0-9a-f-]{36}/$"))
    return page.url


def test_order_journey_from_form_to_approved_review(live_server, page, cluster, reviewer):
    base = live_server.url
    User.objects.create_superuser("operator", "op@example.com", "operator-pass-123")

    log_in(page, base, "operator", "operator-pass-123", "/workflows/order_processing/start/")
    shot(page, "01-start-form")
    small_trace = start_order(page, base, "web-250", "250.00")
    run_id = small_trace.rstrip("/").rsplit("/", 1)[1]

    page.goto(f"{base}/runs/")
    row = page.locator("tr.run-row", has=page.locator(f"a[title='{run_id}']"))
    row.locator(".badge-completed").wait_for()  # the list refreshes itself while live
    shot(page, "02-runs-list")

    page.goto(small_trace)
    page.get_by_text("tool/1/charge_stripe").first.wait_for()
    page.get_by_text("tool/2/send_confirmation_email").first.wait_for()
    page.get_by_text("tool/1/charge_stripe").first.click()
    page.locator(".badge-completed").first.wait_for()
    shot(page, "03-trace-small-order")

    large_trace = start_order(page, base, "web-2500", "2500.00")
    page.locator(".badge-suspended").first.wait_for()
    page.get_by_text("Open the fraud review").wait_for()
    shot(page, "04-trace-awaiting-review")

    # The reviewer, in another browser session, decides in the fraud-review queue.
    page.context.clear_cookies()
    log_in(page, base, "rita", "review-pass-123", "/admin/orders/fraudreview/")
    page.get_by_text("web-2500").first.wait_for()
    shot(page, "05-review-queue")
    page.get_by_role("link", name="web-2500").first.click()
    page.fill("textarea[name=note]", "Known customer, verified by phone")
    shot(page, "06-review-page")
    page.click("button[value=approve]")
    page.get_by_text("approved").first.wait_for()

    # A reviewer reads no traces (the console is the operators'): back to the operator.
    assert page.goto(large_trace).status == 403
    page.context.clear_cookies()
    log_in(page, base, "operator", "operator-pass-123", large_trace.removeprefix(base))
    page.locator(".badge-completed").first.wait_for()
    page.get_by_text("send_confirmation").first.wait_for()
    shot(page, "07-trace-approved-order")
