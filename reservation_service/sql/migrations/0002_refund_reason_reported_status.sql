-- Why a reservation was refunded (RefundReservationRequest.reason), kept for support and audit.
ALTER TABLE reservations ADD COLUMN refund_reason text NOT NULL DEFAULT '';

-- The status a listing shows, so that filtering by status and reading it agree: a SCHEDULED event
-- with no seat left reads SOLD_OUT. The same rule as holds.Event.reported_status (a test pins the
-- two together); list_events filters on this column and nothing else re-derives it.
ALTER TABLE events ADD COLUMN reported_status text NOT NULL
    GENERATED ALWAYS AS (
        CASE WHEN status = 'SCHEDULED' AND paid + pending >= capacity THEN 'SOLD_OUT'
             ELSE status END
    ) STORED;
