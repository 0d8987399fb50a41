"""A buyer's hold survives a page reload (issue 9, item 7): the gateway keeps it in an HttpOnly,
SameSite=Strict cookie, so after a reload the page shows the hold again and can still pay for it;
another browser, without the cookie, sees no hold and cannot cancel it. Headless Chromium against
the whole system as processes, as tests/e2e/test_browser.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slotlock.feed import Feed
from slotlock_cli.devstack import DevStack
from slotlock_cli.system import System
from tests.support import CHROMIUM

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent"),
    pytest.mark.timeout(90),
]


@pytest.fixture
def system(stack: DevStack, feed: Feed, tmp_path: Path) -> Iterator[System]:
    with System(stack, feed, log_dir=tmp_path / "logs", hold_ttl_s=60, gateway=True) as running:
        yield running


def test_a_hold_survives_a_reload_in_its_browser_only(system: System, browser: Any) -> None:
    from playwright.sync_api import expect

    system.seed_event("RELOAD-1", capacity=10, title="Saigon Dinner Show", days_ahead=20)
    buyer = browser.new_context()
    page = buyer.new_page()
    page.goto(system.gateway_url)
    card = page.locator('[data-testid="event-card"][data-code="RELOAD-1"]')
    card.get_by_test_id("book-button").click()
    card.get_by_test_id("quantity-input").fill("2")
    with page.expect_response("**/api/holds") as created:
        card.get_by_test_id("hold-button").click()
    response = created.value
    assert response.status == 201
    assert response.headers["cache-control"] == "no-store"
    (cookie,) = [c for c in buyer.cookies() if c["name"] == "slotlock_hold"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/api/holds"
    expect(card.get_by_test_id("hold-panel")).to_be_visible()
    reservation_id = response.json()["reservation_id"]
    assert page.evaluate("document.cookie").find("slotlock_hold") == -1  # scripts cannot read it

    # Another browser: no hold on its page, and it cannot act on this one.
    other = browser.new_context()
    other_page = other.new_page()
    other_page.goto(system.gateway_url)
    other_card = other_page.locator('[data-testid="event-card"][data-code="RELOAD-1"]')
    expect(other_card).to_be_visible()
    expect(other_card.get_by_test_id("hold-panel")).to_be_hidden()
    assert other.request.get(f"{system.gateway_url}/api/holds/current").status == 404
    refused = other.request.post(f"{system.gateway_url}/api/holds/{reservation_id}/cancel", data={})
    assert refused.status == 400, refused.text()

    # The buyer reloads: the hold is back on its card, and can still be paid.
    page.reload()
    card = page.locator('[data-testid="event-card"][data-code="RELOAD-1"]')
    expect(card.get_by_test_id("hold-panel")).to_be_visible()
    expect(card.get_by_test_id("hold-summary")).to_contain_text("2 seats held for you")
    card.get_by_test_id("pay-button").click()
    expect(card.get_by_test_id("hold-result")).to_contain_text("Paid")
    assert not [c for c in buyer.cookies() if c["name"] == "slotlock_hold"]
    page.reload()
    expect(card.get_by_test_id("hold-panel")).to_be_hidden()
    buyer.close()
    other.close()
