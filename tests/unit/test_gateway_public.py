"""The gateway as a public-facing sample (issue 9, item 7), in-process without services: security
headers, cross-site writes refused, holds per client limited (429 + Retry-After), the simulated
Pay absent outside demo mode, the hold cookie's parsing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway import security
from gateway.app import create_app
from gateway.settings import Settings
from slotlock.settings import SettingsError


def app_client(**settings: Any) -> httpx.AsyncClient:
    app = create_app(Settings(**settings))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=10)


async def test_every_response_carries_the_security_headers() -> None:
    async with app_client() as client:
        for response in (
            await client.get("/"),
            await client.get("/static/app.js"),
            await client.get("/api/nowhere"),
            await client.post("/api/holds", content="x", headers={"Content-Type": "text/plain"}),
        ):
            headers = response.headers
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert "script-src 'self'" in headers["content-security-policy"]
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "no-referrer"
            assert headers["x-frame-options"] == "DENY"


async def test_cross_site_writes_are_refused() -> None:
    evil = {"Origin": "https://evil.example"}
    async with app_client(allowed_origins=("https://shop.example",)) as client:
        # What a hostile page's <form> or no-cors fetch sends: refused before anything is read.
        text = await client.post(
            "/api/holds",
            content='{"event_id": "e1", "quantity": 40}',
            headers={**evil, "Content-Type": "text/plain"},
        )
        assert text.status_code == 403, text.text
        assert text.json()["code"] == "CROSS_SITE"
        for path in ("/api/holds", "/api/holds/r1/cancel"):
            assert (await client.post(path, json={}, headers=evil)).status_code == 403
        marked = await client.post("/api/holds", json={}, headers={"Sec-Fetch-Site": "cross-site"})
        assert marked.status_code == 403
        # Same site, or an allowed origin, goes on to the usual checks (400: empty body).
        for origin in ("http://gateway", "https://shop.example"):
            ok = await client.post("/api/holds", json={}, headers={"Origin": origin})
            assert ok.status_code == 400, (origin, ok.text)
        # Without an Origin (curl, scripts) a text/plain body is still not JSON: 415.
        plain = await client.post(
            "/api/holds", content="{}", headers={"Content-Type": "text/plain"}
        )
        assert plain.status_code == 415


async def test_holds_per_client_are_limited_with_retry_after() -> None:
    async with app_client(holds_per_minute=2) as client:
        for _ in range(2):  # (refused for their body, but counted: attempts are what is limited)
            assert (await client.post("/api/holds", json={})).status_code == 400
        limited = await client.post("/api/holds", json={"event_id": "e1", "quantity": 1})
        assert limited.status_code == 429, limited.text
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert "wait" in limited.json()["error"]
    limiter = security.HoldLimiter(2, 60.0)
    assert [limiter.retry_after("a", now) for now in (0.0, 1.0, 2.0)] == [0, 0, 58]
    assert limiter.retry_after("b", 2.0) == 0  # per client
    assert limiter.retry_after("a", 60.5) == 0  # the window slides
    assert security.HoldLimiter(0, 60.0).retry_after("a") == 0  # 0 = no limit


async def test_the_simulated_pay_exists_in_demo_mode_only() -> None:
    async with app_client() as client:
        refused = await client.post("/api/holds/r1/pay", json={"hold_token": "t"})
        assert refused.status_code == 404
    async with app_client(demo_payments=True) as client:
        present = await client.post("/api/holds/r1/pay", json={"hold_token": 12})
        assert present.status_code == 400  # the route exists (the body is wrong)
    assert Settings().demo_payments is False
    assert Settings.from_env({"SLOTLOCK_GATEWAY_DEMO_PAYMENTS": "true"}).demo_payments


def test_gateway_public_settings() -> None:
    s = Settings.from_env(
        {
            "SLOTLOCK_GATEWAY_ALLOWED_ORIGINS": "https://shop.example, http://localhost:3000",
            "SLOTLOCK_GATEWAY_HOLDS_PER_MINUTE": "5",
            "SLOTLOCK_GATEWAY_SECURE_COOKIES": "false",
        }
    )
    assert s.allowed_origins == ("https://shop.example", "http://localhost:3000")
    assert (s.holds_per_minute, s.secure_cookies) == (5, False)
    d = Settings()
    assert (d.holds_per_minute, d.secure_cookies, d.allowed_origins) == (10, True, ())
    with pytest.raises(SettingsError, match="SLOTLOCK_GATEWAY_ALLOWED_ORIGINS must be"):
        Settings.from_env({"SLOTLOCK_GATEWAY_ALLOWED_ORIGINS": "shop.example/path"})


def test_hold_cookie_values() -> None:
    value = security.hold_cookie_value("3f1c-uuid", "ab12")
    assert security.parse_hold_cookie(value) == ("3f1c-uuid", "ab12")
    for bad in (None, "", "no-dot", ".x", "x.", "a." + "b" * 400):
        assert security.parse_hold_cookie(bad) is None
