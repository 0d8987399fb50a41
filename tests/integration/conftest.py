"""Integration fixtures: a fresh database per test, cloned from a migrated template (cheap), and
the reservation service running in-process against it and the session's NATS."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import grpc
import psycopg
import pytest
from psycopg import sql as pgsql

from reservation_service.migrations import apply_migrations
from reservation_service.server import ReservationServer
from reservation_service.settings import Settings
from slotlock.feed import Feed
from slotlock.v1 import reservation_pb2_grpc
from slotlock_cli.devstack import DevStack

TEMPLATE = "slotlock_template"


def database_url_for(base_url: str, name: str) -> str:
    head, _, tail = base_url.rpartition("/")
    query = tail.partition("?")[2]
    return f"{head}/{name}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def template_database(stack: DevStack) -> str:
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {}").format(pgsql.Identifier(TEMPLATE)))
        conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(TEMPLATE)))
    url = database_url_for(stack.database_url, TEMPLATE)
    asyncio.run(apply_migrations(url))
    return TEMPLATE


@pytest.fixture
def database_url(stack: DevStack, template_database: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                pgsql.Identifier(name), pgsql.Identifier(template_database)
            )
        )
    yield database_url_for(stack.database_url, name)
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
        )


StartReservation = Callable[..., Awaitable[ReservationServer]]


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
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield reservation_pb2_grpc.ReservationServiceStub(channel)
