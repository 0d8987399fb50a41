"""Session fixtures: real PostgreSQL and NATS for every test that asks for them.

By default both are embedded (started from the pip-installed binaries, once per session). Set
``SLOTLOCK_TEST_DATABASE_URL`` and/or ``SLOTLOCK_TEST_NATS_URL`` to use real servers instead.
Tests that stop and start NATS ask for ``own_nats`` (a private embedded server) instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slotlock.feed import Feed
from slotlock_cli.devstack import DevStack, EmbeddedNats
from tests.support import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    root = tmp_path_factory.mktemp("stack")
    dev = DevStack(
        database_url=os.environ.get("SLOTLOCK_TEST_DATABASE_URL"),
        nats_url=os.environ.get("SLOTLOCK_TEST_NATS_URL"),
        root=root,
        durable=False,  # tests want speed, not crash safety of the test cluster
    )
    dev.start()
    yield dev
    dev.stop()


@pytest.fixture
def feed() -> Feed:
    """A stream and subject prefix of this test's own on the shared NATS server."""
    tag = uuid.uuid4().hex[:10]
    return Feed(stream=f"T_{tag}", subject_prefix=f"t{tag}.event")


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A private NATS server this test may stop and start again (same port, same store)."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium (playwright), for the tests marked ``browser``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()
