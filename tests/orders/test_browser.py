"""A person's journey through the service, in Debian's Chromium driven by Playwright,
against `live_server` and a real qcluster: start orders from the console's form, watch
them run, read the trace, and approve a large order in the fraud-review queue.

Screenshots are saved under `test-artifacts/browser/`.
"""

import json
import os
import re
import threading
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection

from orders.models import FraudReview, Order, ReviewState
from orders.services.reviews import review_claim
from tests.support.cluster import QCluster
from tests.support.requirements import skip_or_fail
from workflows.models import RunStatus

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
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
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
    payload = {
        "order_id": order_id,
        "customer_id": "cus_browser",
        "customer_email": "grace@example.com",
        "amount": amount,
        "currency": "usd",
    }
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
    page.fill("input[name=note]", "Known customer, verified by phone")
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


# --- the reviewers' desk at 1440x900 (issue 21) -----------------------------------------

DESK = {"width": 1440, "height": 900}


@pytest.fixture
def desk(browser):
    context = browser.new_context(viewport=DESK)
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


@pytest.fixture
def demo_reviews(queue_capture, place_order):
    """Open reviews as the demo leaves them (`manage.py demo`: 2500.00 and 4200.00 USD
    for `cus_demo_N`, `customerN@example.com`), with the longest customer id and email
    the rules allow a reviewer to meet, and a customer whose history raises flags."""
    place_order(
        "400.00", order_id="hist-1", customer_id="cus_demo_2", email="customer2@example.com"
    )
    assert drained(queue_capture) == ["completed"]
    orders = [
        place_order(
            "2500.00", order_id="demo-2", customer_id="cus_demo_2", email="customer2@example.com"
        ),
        place_order(
            "4200.00", order_id="demo-3", customer_id="cus_demo_3", email="customer3@example.com"
        ),
        place_order(
            "99999.99",
            order_id="long-" + "x" * 59,
            customer_id="cus_" + "L" * 251,
            email=f"{'a' * 64}@{'very-long-subdomain.' * 8}example.com",
        ),
    ]
    assert drained(queue_capture) == ["suspended"] * 3
    return [Order.objects.get(pk=order.pk) for order in orders]


def drained(capture) -> list[str]:
    """`queue_capture.drain()` off this thread, whose event loop Playwright's sync API
    holds (the engine runs a segment with `async_to_sync`)."""
    outcomes: list[str] = []

    def drain() -> None:
        try:
            outcomes.extend(capture.drain())
        finally:
            connection.close()

    worker = threading.Thread(target=drain)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the queued segments did not finish within 60 s"
    return outcomes


def desk_shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"desk-{name}.png"))  # the viewport: what fits


def below_the_fold(page, selector: str) -> list[str]:
    """The elements matching `selector` whose box is not wholly inside the first 900 px."""
    boxes = [(page.locator(selector).nth(i)) for i in range(page.locator(selector).count())]
    assert boxes, selector
    return [
        f"{selector}[{i}] at {box}"
        for i, box in enumerate(element.bounding_box() for element in boxes)
        if box is None or box["y"] < 0 or box["y"] + box["height"] > DESK["height"]
    ]


def test_every_demo_review_is_decided_in_one_screen_with_the_keyboard(
    live_server, desk, reviewer, demo_reviews, queue_capture
):
    from playwright.sync_api import expect

    base = live_server.url
    log_in(desk, base, "rita", "review-pass-123", "/admin/orders/fraudreview/")
    for n, order in enumerate(demo_reviews, start=1):
        review = FraudReview.objects.get(run_id=order.run_id)
        desk.goto(f"{base}/admin/orders/fraudreview/{review.pk}/change/")
        expect(desk.locator(".risk-flags li")).to_have_count(6)
        desk_shot(desk, f"review-{n}")
        missing = [
            *below_the_fold(desk, "#approve-button"),
            *below_the_fold(desk, "#reject-button"),
            *below_the_fold(desk, ".risk-flags .risk-chip"),
            *below_the_fold(desk, "#id_note"),
        ]
        assert missing == [], order.order_id
        assert desk.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    # The first review, decided with the keyboard alone: a, then Enter.
    first = FraudReview.objects.get(run_id=demo_reviews[0].run_id)
    desk.goto(f"{base}/admin/orders/fraudreview/{first.pk}/change/")
    desk.keyboard.press("a")
    expect(desk.locator("#approve-button")).to_have_class(re.compile(r"\bchosen\b"))
    expect(desk.locator("#approve-button")).to_be_focused()
    desk.keyboard.press("Enter")
    # "decide and open the next" is on by default: the next review opens.
    expect(desk.locator(".messagelist")).to_contain_text("Approved the review of order demo-2")
    expect(desk.locator(".bar-title")).to_contain_text("demo-3")
    first.refresh_from_db()
    assert first.state == ReviewState.APPROVED and first.resumed_by == reviewer
    assert first.run.status != RunStatus.SUSPENDED  # resumed
    assert drained(queue_capture) == ["completed"]
    assert Order.objects.get(pk=demo_reviews[0].pk).status == "completed"

    # n opens the next without deciding; letters typed into the note choose nothing.
    desk.keyboard.press("n")
    expect(desk.locator(".bar-title")).to_contain_text("long-")
    desk.locator("#id_note").click()
    desk.keyboard.type("nearly ran a card")
    desk.keyboard.press("Enter")  # no decision chosen yet: nothing is sent
    expect(desk.locator("#keys-hint")).to_have_class(re.compile(r"keys-hint-needed"))
    assert desk.locator("#approve-button.chosen, #reject-button.chosen").count() == 0
    assert queue_capture.sent == []


def test_the_queue_fits_1440_without_scrolling_sideways(live_server, desk, reviewer, demo_reviews):
    # Another reviewer is on the longest one: the claim column and the page's confirmation.
    otto = User.objects.create_user("otto", password="x", is_staff=True)
    otto.groups.add(*reviewer.groups.all())
    claimed = FraudReview.objects.get(run_id=demo_reviews[2].run_id)
    review_claim(review=claimed, by=User.objects.get(pk=otto.pk))

    base = live_server.url
    log_in(desk, base, "rita", "review-pass-123", "/admin/orders/fraudreview/")
    desk.locator("#result_list").wait_for()
    desk.get_by_text("being reviewed by otto").wait_for()
    desk_shot(desk, "queue")
    assert desk.evaluate("document.documentElement.scrollWidth") <= desk.evaluate(
        "window.innerWidth"
    )
    fits = desk.evaluate(
        """() => {
            const table = document.querySelector('#result_list');
            const box = table.closest('.results');
            return [table.scrollWidth, box.clientWidth, table.getBoundingClientRect().right,
                    box.getBoundingClientRect().right];
        }"""
    )
    table_width, box_width, table_right, box_right = fits
    assert table_width <= box_width and table_right <= box_right + 0.5, fits
    # Risk first, in colour: the long order's new domain is red.
    assert desk.locator("#result_list .risk-high.risk-flag-domain").count() >= 1
    header = desk.locator("#result_list thead").inner_text().lower()
    assert header.index("\u00d7 avg") < header.index("time left")

    desk.goto(f"{base}/admin/orders/fraudreview/{claimed.pk}/change/")
    desk.get_by_text("decide although otto is reviewing it").wait_for()
    desk_shot(desk, "review-claimed-by-another")
    assert [
        *below_the_fold(desk, "#approve-button"),
        *below_the_fold(desk, "#reject-button"),
        *below_the_fold(desk, ".over-claim input"),
        *below_the_fold(desk, ".risk-flags .risk-chip"),
    ] == []
    assert desk.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
