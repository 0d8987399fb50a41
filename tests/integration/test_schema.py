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
    # history: migration 0006 (issue 12).
    assert tables == {"events", "reservations", "outbox", "schema_migrations", "history"}
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


def test_migration_0002_keeps_refund_reasons_and_the_reported_status(database_url: str) -> None:
    """A scheduled event with no seat left reads SOLD_OUT in the database as in holds.Event."""
    with psycopg.connect(database_url) as conn:
        columns = {
            (r[0], r[1])
            for r in conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = 'public'"
            )
        }
        assert {("reservations", "refund_reason"), ("events", "reported_status")} <= columns
        conn.execute(
            "INSERT INTO events (id, code, experience_title, local_date, local_start_time,"
            " time_zone, starts_at, capacity, paid, pending, status, currency, dinner_price,"
            " experience_only_price) VALUES"
            " (gen_random_uuid(), 'FULL', 't', '2030-01-01', '19:00', 'UTC', now(), 2, 1, 1,"
            "  'SCHEDULED', 'VND', 1, 1),"
            " (gen_random_uuid(), 'OPEN', 't', '2030-01-01', '19:00', 'UTC', now(), 3, 1, 1,"
            "  'SCHEDULED', 'VND', 1, 1),"
            " (gen_random_uuid(), 'OFF', 't', '2030-01-01', '19:00', 'UTC', now(), 0, 0, 0,"
            "  'CANCELLED', 'VND', 1, 1)"
        )
        reported = dict(conn.execute("SELECT code, reported_status FROM events").fetchall())
    assert reported == {"FULL": "SOLD_OUT", "OPEN": "SCHEDULED", "OFF": "CANCELLED"}
