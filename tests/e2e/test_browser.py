"""The listing page in headless Chromium against the whole system as real processes (Postgres,
NATS, reservation, availability, gateway): one buyer's hold shows up live on another buyer's page,
paying turns it into paid seats, and an abandoned hold disappears by itself when it expires.

Chromium is Debian's (/usr/bin/chromium, installed by scripts/install-chromium), never a browser
downloaded by `playwright install`. Screenshots land in test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slotlock.feed import Feed
from slotlock_cli.devstack import DevStack
from slotlock_cli.system import System
from tests.support import CHROMIUM

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
HOLD_TTL_S = 4.0
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="/usr/bin/chromium is absent (run scripts/install-chromium)",
    ),
    pytest.mark.timeout(90),
]


@pytest.fixture
def system(stack: DevStack, feed: Feed, tmp_path: Path) -> Iterator[System]:
    with System(
        stack, feed, log_dir=tmp_path / "logs", hold_ttl_s=HOLD_TTL_S, gateway=True
    ) as running:
        yield running


def card(page: Any, code: str) -> Any:
    return page.locator(f'[data-testid="event-card"][data-code="{code}"]')


def test_hold_shows_live_on_another_page_then_paid_then_expired(
    system: System, browser: Any
) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    system.seed_event("E2E-SHOW", capacity=10, title="Saigon Dinner Show", days_ahead=20)
    system.seed_event(
        "E2E-LATE",
        capacity=40,
        title="Late Jazz & Street Food Evening on the River",
        days_ahead=21,
        start_time="21:30",
        dinner_price=2_250_000,
        experience_only_price=850_000,
    )

    page_a = browser.new_context(viewport=DESKTOP).new_page()
    page_b = browser.new_context(viewport=PHONE, device_scale_factor=2).new_page()
    for page in (page_a, page_b):
        page.goto(system.gateway_url)
        expect(card(page, "E2E-SHOW")).to_be_visible()
        expect(page.get_by_test_id("live-status")).to_have_attribute("data-live", "true")
    show_a, show_b = card(page_a, "E2E-SHOW"), card(page_b, "E2E-SHOW")
    expect(show_b.get_by_test_id("live-line")).to_have_text("0 paid • 10 available")
    expect(show_a.get_by_test_id("prices")).to_contain_text("1.500.000")

    # Buyer A holds two seats; buyer B sees them being processed within two seconds.
    show_a.get_by_test_id("book-button").click()
    show_a.get_by_test_id("quantity-input").fill("2")
    show_a.get_by_test_id("hold-button").click()
    held_at = time.monotonic()
    expect(show_a.get_by_test_id("hold-panel")).to_be_visible()
    expect(show_b.get_by_test_id("processing")).to_have_text("2 being processed", timeout=2000)
    assert time.monotonic() - held_at < 2.0
    expect(show_b.get_by_test_id("available")).to_have_text("8 available")
    expect(show_a.get_by_test_id("hold-countdown")).to_have_text(_countdown_pattern())

    # Buyer A pays: buyer B sees paid seats and nothing being processed.
    show_a.get_by_test_id("pay-button").click()
    expect(show_a.get_by_test_id("hold-result")).to_contain_text("Paid")
    expect(show_b.get_by_test_id("paid")).to_have_text("2 paid", timeout=2000)
    expect(show_b.get_by_test_id("processing")).to_have_count(0)
    expect(show_b.get_by_test_id("live-line")).to_have_text("2 paid • 8 available")

    # Buyer A holds three more and walks away: the hold expires and leaves B's page by itself.
    show_a.get_by_test_id("book-button").click()
    show_a.get_by_test_id("quantity-input").fill("3")
    show_a.get_by_test_id("hold-button").click()
    expect(show_b.get_by_test_id("processing")).to_have_text("3 being processed", timeout=2000)
    page_a.screenshot(path=str(ARTIFACTS / "browser-a-desktop-holding.png"), full_page=True)
    page_b.screenshot(path=str(ARTIFACTS / "browser-b-phone-processing.png"), full_page=True)
    for page in (page_a, page_b):  # tidy: nothing sticks out sideways, on desktop or phone
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    expect(show_b.get_by_test_id("processing")).to_have_count(0, timeout=(HOLD_TTL_S + 4) * 1000)
    expect(show_b.get_by_test_id("live-line")).to_have_text("2 paid • 8 available")
    expect(show_a.get_by_test_id("error")).to_contain_text("expired")
    page_a.screenshot(path=str(ARTIFACTS / "browser-a-desktop-expired.png"), full_page=True)
    page_b.screenshot(path=str(ARTIFACTS / "browser-b-phone-after-expiry.png"), full_page=True)


def test_readable_error_when_asking_for_more_seats_than_left(system: System, browser: Any) -> None:
    from playwright.sync_api import expect

    system.seed_event("E2E-SMALL", capacity=3, title="Chef's Table", days_ahead=5)
    page = browser.new_context(viewport=PHONE).new_page()
    page.goto(system.gateway_url)
    show = card(page, "E2E-SMALL")
    expect(show.get_by_test_id("badge")).to_be_visible()
    show.get_by_test_id("book-button").click()
    # The input's max is a hint only; the service is the one that refuses.
    show.get_by_test_id("quantity-input").evaluate("el => { el.removeAttribute('max') }")
    show.get_by_test_id("quantity-input").fill("5")
    show.get_by_test_id("hold-button").click()
    expect(show.get_by_test_id("error")).to_contain_text("seats")
    expect(show.get_by_test_id("hold-panel")).to_be_hidden()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-phone-error.png"), full_page=True)

    # Asking again for what is there works, and the hold panel fits a phone.
    show.get_by_test_id("quantity-input").fill("3")
    show.get_by_test_id("hold-button").click()
    expect(show.get_by_test_id("hold-panel")).to_be_visible()
    expect(show.get_by_test_id("error")).to_be_hidden()
    expect(show.get_by_test_id("hold-summary")).to_contain_text("3 seats held for you")
    expect(show.get_by_test_id("badge")).to_have_text("Sold out")
    expect(show.get_by_test_id("book-button")).to_be_hidden()
    page.screenshot(path=str(ARTIFACTS / "browser-phone-hold.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_page_says_when_a_service_is_down_and_recovers(system: System, browser: Any) -> None:
    from playwright.sync_api import expect

    system.seed_event("E2E-DOWN", capacity=8, title="Rooftop Show", days_ahead=9)
    page = browser.new_context(viewport=DESKTOP).new_page()
    page.goto(system.gateway_url)
    show = card(page, "E2E-DOWN")
    expect(show).to_be_visible()
    banner = page.get_by_test_id("banner")
    expect(banner).to_be_hidden()

    system.stop_service("availability")
    expect(banner).to_contain_text("availability service is not reachable")
    expect(page.get_by_test_id("live-status")).to_have_attribute("data-live", "false")

    system.stop_service("reservation")
    show.get_by_test_id("book-button").click()
    show.get_by_test_id("hold-button").click()
    expect(show.get_by_test_id("error")).to_contain_text("reservation service is not reachable")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-desktop-services-down.png"), full_page=True)

    system.start_service("availability")
    system.start_service("reservation")
    expect(banner).to_be_hidden(timeout=10_000)
    expect(page.get_by_test_id("live-status")).to_have_attribute("data-live", "true")
    # The gateway's channel reconnects by itself; the buyer just tries again.
    deadline = time.monotonic() + 10
    while True:
        show.get_by_test_id("hold-button").click()
        try:
            expect(show.get_by_test_id("hold-panel")).to_be_visible(timeout=1000)
            break
        except AssertionError:
            assert time.monotonic() < deadline, show.get_by_test_id("error").inner_text()
    expect(show.get_by_test_id("hold-panel")).to_be_visible()
    expect(show.get_by_test_id("processing")).to_have_text("1 being processed")


def test_live_indicator_reads_updates_paused_while_availability_is_down(
    system: System, browser: Any
) -> None:
    """Issue 10's "Done when": the page says "Updates paused" instead of "Live" while the
    availability service is down, and "Live" again once it is back."""
    from playwright.sync_api import expect

    system.seed_event("E2E-PAUSE", capacity=6, title="Harbour Cruise", days_ahead=11)
    page = browser.new_context(viewport=DESKTOP).new_page()
    page.goto(system.gateway_url)
    expect(card(page, "E2E-PAUSE")).to_be_visible()
    live = page.get_by_test_id("live-status")
    expect(live).to_have_text("Live")
    expect(live).to_have_attribute("data-live", "true")

    system.stop_service("availability")
    expect(live).to_have_text("Updates paused", timeout=10_000)
    expect(live).to_have_attribute("data-live", "false")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-desktop-updates-paused.png"), full_page=True)

    system.start_service("availability")
    expect(live).to_have_text("Live", timeout=15_000)
    expect(live).to_have_attribute("data-live", "true")
    expect(card(page, "E2E-PAUSE").get_by_test_id("live-line")).to_have_text("0 paid • 6 available")


def _countdown_pattern() -> Any:
    import re

    return re.compile(r"^0:0[0-4]$")
