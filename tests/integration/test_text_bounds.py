"""The database keeps the contract's request bounds too (CHECK constraints of the same sizes)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg_errors

from slotlock import bounds
from slotlock.v1 import catalog_pb2, reservation_pb2

# Where each bounded request field is stored: (table, column) -> the contract field.
STORED = {
    ("events", "code"): (reservation_pb2.UpsertEventRequest, "code"),
    ("events", "experience_title"): (reservation_pb2.UpsertEventRequest, "experience_title"),
    ("events", "time_zone"): (reservation_pb2.UpsertEventRequest, "time_zone"),
    ("events", "currency"): (catalog_pb2.Money, "currency"),
    ("reservations", "customer_ref"): (reservation_pb2.CreateHoldRequest, "customer_ref"),
    ("reservations", "idempotency_key"): (reservation_pb2.CreateHoldRequest, "idempotency_key"),
    ("reservations", "provider_order_id"): (catalog_pb2.PaymentAttempt, "provider_order_id"),
    ("reservations", "virtual_account_number"): (
        catalog_pb2.PaymentAttempt,
        "virtual_account_number",
    ),
    ("reservations", "qr_code"): (catalog_pb2.PaymentAttempt, "qr_code"),
    ("reservations", "qr_code_url"): (catalog_pb2.PaymentAttempt, "qr_code_url"),
    ("reservations", "payment_reference"): (
        reservation_pb2.ConfirmHoldRequest,
        "payment_reference",
    ),
    ("reservations", "refund_reason"): (reservation_pb2.RefundReservationRequest, "reason"),
}


def test_every_stored_bound_matches_the_contract(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE contype = 'c' AND conname LIKE '%%\\_length'"
        ).fetchall()
    found = {(table, name.removesuffix("_length")): definition for table, name, definition in rows}
    for (table, column), (message, field) in STORED.items():
        limit = bounds.bounds_of(message.DESCRIPTOR.fields_by_name[field]).max_length
        definition = found.get((table, column))
        assert definition is not None, f"no CHECK on {table}.{column}"
        assert f"char_length({column}) <= {limit})" in definition, (table, column, definition)


def test_the_database_refuses_a_value_past_its_bound(database_url: str) -> None:
    with psycopg.connect(database_url) as conn, pytest.raises(pg_errors.CheckViolation):
        conn.execute(
            "INSERT INTO events (id, code, experience_title, local_date, local_start_time,"
            " time_zone, starts_at, capacity, status, currency, dinner_price,"
            " experience_only_price) VALUES (gen_random_uuid(), repeat('x', 101), 't',"
            " '2030-01-01', '19:00', 'UTC', now(), 1, 'SCHEDULED', 'VND', 0, 0)"
        )
