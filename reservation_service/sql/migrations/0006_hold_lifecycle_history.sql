-- The whole life of a hold (issue 12): extensions, payment in progress with one grace period,
-- late payments (PAYMENT_TO_REFUND), partial refunds, per-event overrides, and the history table.

-- Per-event overrides of the service's hold settings (NULL: the service default applies).
ALTER TABLE events
    ADD COLUMN hold_ttl_s integer CHECK (hold_ttl_s > 0),
    ADD COLUMN max_seats_per_hold integer CHECK (max_seats_per_hold > 0),
    ADD COLUMN max_seats_per_customer integer CHECK (max_seats_per_customer > 0),
    ADD COLUMN max_hold_lifetime_s integer CHECK (max_hold_lifetime_s > 0);

ALTER TABLE reservations
    -- ExtendHold: how many times the deadline was pushed out (capped by a setting).
    ADD COLUMN extensions integer NOT NULL DEFAULT 0 CHECK (extensions >= 0),
    -- RecordPaymentAttempt with payment in progress: the hold does not lapse before this.
    ADD COLUMN payment_grace_until timestamptz,
    -- ConfirmHold after the hold lapsed took the seats again.
    ADD COLUMN paid_late boolean NOT NULL DEFAULT false,
    -- Seats refunded so far (a partial refund leaves the reservation PAID with fewer seats).
    ADD COLUMN refunded_quantity integer NOT NULL DEFAULT 0,
    ADD CONSTRAINT refunded_within_quantity
        CHECK (refunded_quantity >= 0 AND refunded_quantity <= quantity),
    -- When the hold really lapses: its deadline, or the end of its payment grace. The expirer and
    -- CreateHold's release of lapsed holds read this one column.
    ADD COLUMN lapses_at timestamptz
        GENERATED ALWAYS AS (coalesce(payment_grace_until, expires_at)) STORED;

-- A late payment with no seats left to take: recorded, to be refunded by the payment side.
ALTER TABLE reservations DROP CONSTRAINT reservations_status_check;
ALTER TABLE reservations ADD CONSTRAINT reservations_status_check CHECK (
    status IN ('PENDING', 'PAID', 'CANCELLED', 'EXPIRED', 'REFUNDED', 'PAYMENT_TO_REFUND'));

DROP INDEX reservations_pending_by_expiry;
DROP INDEX reservations_pending_by_event;
-- Same names as before, now on lapses_at: the expirer's work list and CreateHold's lapsed holds.
CREATE INDEX reservations_pending_by_expiry ON reservations (lapses_at) WHERE status = 'PENDING';
CREATE INDEX reservations_pending_by_event ON reservations (event_id, lapses_at)
    WHERE status = 'PENDING';
-- Per-customer limits: a customer's PENDING and PAID seats on one event.
CREATE INDEX reservations_held_by_customer ON reservations (event_id, customer_ref)
    WHERE status IN ('PENDING', 'PAID');

-- Every change to a reservation or an event, written in the transaction that made it. Unlike the
-- outbox (purged once published) it is kept for SLOTLOCK_KEEP_HISTORY_S; reservation_id has no
-- foreign key so that history outlives purged reservations.
CREATE TABLE history (
    id                  bigserial PRIMARY KEY,
    event_id            uuid NOT NULL,
    reservation_id      uuid,
    occurred_at         timestamptz NOT NULL,
    actor               text NOT NULL CHECK (char_length(actor) <= 500),
    change_type         text NOT NULL,
    reservation_status  text,
    seats               integer NOT NULL DEFAULT 0,  -- seats this change concerned
    event_version       bigint NOT NULL,
    reason              text NOT NULL DEFAULT '' CHECK (char_length(reason) <= 500),
    detail              text NOT NULL DEFAULT '' CHECK (char_length(detail) <= 1000)
);

CREATE INDEX history_by_event ON history (event_id, id);
CREATE INDEX history_by_reservation ON history (reservation_id, id) WHERE reservation_id IS NOT NULL;
CREATE INDEX history_by_time ON history (occurred_at);
