-- Events with their seat counters, holds (reservations), and the transactional outbox.

CREATE TABLE events (
    id                       uuid PRIMARY KEY,
    code                     text NOT NULL UNIQUE CHECK (code <> ''),
    experience_title         text NOT NULL,
    local_date               date NOT NULL,
    local_start_time         time NOT NULL,
    time_zone                text NOT NULL,
    starts_at                timestamptz NOT NULL,
    capacity                 integer NOT NULL CHECK (capacity >= 0),
    paid                     integer NOT NULL DEFAULT 0 CHECK (paid >= 0),
    pending                  integer NOT NULL DEFAULT 0 CHECK (pending >= 0),
    status                   text NOT NULL CHECK (status IN ('SCHEDULED', 'CANCELLED', 'SOLD_OUT')),
    experience_only_enabled  boolean NOT NULL DEFAULT false,
    currency                 text NOT NULL,
    dinner_price             bigint NOT NULL CHECK (dinner_price >= 0),
    experience_only_price    bigint NOT NULL CHECK (experience_only_price >= 0),
    version                  bigint NOT NULL DEFAULT 1,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    -- The last line of defence against overselling, whatever the code above it does.
    CONSTRAINT seats_within_capacity CHECK (paid + pending <= capacity)
);

CREATE INDEX events_by_start ON events (starts_at, id);

CREATE TABLE reservations (
    id                      uuid PRIMARY KEY,
    event_id                uuid NOT NULL REFERENCES events (id),
    quantity                integer NOT NULL CHECK (quantity > 0),
    ticket_type             text NOT NULL CHECK (ticket_type IN ('DINNER', 'EXPERIENCE_ONLY')),
    status                  text NOT NULL
                            CHECK (status IN ('PENDING', 'PAID', 'CANCELLED', 'EXPIRED', 'REFUNDED')),
    customer_ref            text NOT NULL DEFAULT '',
    idempotency_key         text UNIQUE,
    request_fingerprint     text,
    created_at              timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL,
    expires_at              timestamptz NOT NULL,   -- the hold's deadline (kept after it lapses)
    provider_order_id       text,
    virtual_account_number  text,
    qr_code                 text,
    qr_code_url             text,
    payment_reference       text NOT NULL DEFAULT ''
);

-- The expirer's work list: the earliest deadline first, PENDING rows only.
CREATE INDEX reservations_pending_by_expiry ON reservations (expires_at) WHERE status = 'PENDING';
-- CreateHold releases an event's lapsed holds before it counts seats.
CREATE INDEX reservations_pending_by_event ON reservations (event_id, expires_at)
    WHERE status = 'PENDING';
CREATE INDEX reservations_by_event ON reservations (event_id, created_at, id);
CREATE INDEX reservations_by_created ON reservations (created_at, id);

CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,   -- also the JetStream Nats-Msg-Id
    event_id      uuid NOT NULL,
    payload       bytea NOT NULL,          -- serialized slotlock.v1.EventChange (without change_id)
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);

CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
