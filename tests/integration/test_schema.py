"""A database built from the migrations has the schema the code expects."""

from __future__ import annotations

import asyncio

import psycopg

from reservation_service.migrations import apply_migrations


def test_migrations_build_the_expected_schema_and_are_idempotent(database_url: str) -> None:
    assert asyncio.run(apply_migrations(database_url)) == []  # template already migrated
    with psycopg.connect(database_url) as conn:
        tables = {
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        checks = {
            r[0]
            for r in conn.execute(
                "SELECT conname FROM pg_constraint WHERE conrelid = 'events'::regclass AND contype = 'c'"
            )
        }
        indexes = {
            r[0]
            for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
        }
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'reservations'"
            )
        }
    assert tables == {"events", "reservations", "outbox", "schema_migrations"}
    assert "seats_within_capacity" in checks
    assert {
        "reservations_pending_by_expiry",
        "reservations_pending_by_event",
        "outbox_unpublished",
    } <= indexes
    assert {
        "expires_at",
        "idempotency_key",
        "provider_order_id",
        "qr_code_url",
        "payment_reference",
    } <= columns
