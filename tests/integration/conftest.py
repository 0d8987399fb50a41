"""Integration fixtures: a fresh database per test, cloned from a migrated template (cheap), and
the reservation service running in-process against it and the session's NATS."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest

from reservation_service.migrations import apply_migrations
from reservation_service.server import ReservationServer
from reservation_service.settings import Settings
from slotlock.feed import Feed
from slotlock.v1 import reservation_pb2_grpc
from slotlock_cli.devstack import DevStack
from slotlock_cli.system import create_database, drop_database
from tests.support import TEST_SECURITY, StartReservation, open_channel

TEMPLATE = "slotlock_template"


@pytest.fixture(scope="session")
def template_database(stack: DevStack) -> str:
    drop_database(stack.database_url, TEMPLATE)
    url = create_database(stack.database_url, TEMPLATE)
    asyncio.run(apply_migrations(url))
    return TEMPLATE


@pytest.fixture
def database_url(stack: DevStack, template_database: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield create_database(stack.database_url, name, template=template_database)
    drop_database(stack.database_url, name)


@pytest.fixture
async def start_reservation(
    stack: DevStack, database_url: str, feed: Feed
) -> AsyncIterator[StartReservation]:
    """Start a reservation service replica in-process: ``await start_reservation(hold_ttl_s=1)``.
    Every replica started by one test shares its database and feed."""
    started: list[ReservationServer] = []

    async def start(**overrides: Any) -> ReservationServer:
        settings = replace(
            Settings(
                database_url=database_url,
                nats_url=stack.nats_url,
                port=0,
                stream=feed.stream,
                subject_prefix=feed.subject_prefix,
                hold_token_secret="test-secret",
                security=TEST_SECURITY,
                expiry_recheck_s=0.5,
            ),
            **overrides,
        )
        server = await ReservationServer(settings).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop(grace=0)


@pytest.fixture
async def reservation(
    start_reservation: StartReservation,
) -> AsyncIterator[reservation_pb2_grpc.ReservationServiceStub]:
    """A stub for one default in-process replica."""
    server = await start_reservation()
    async with open_channel(f"127.0.0.1:{server.port}") as channel:
        yield reservation_pb2_grpc.ReservationServiceStub(channel)
