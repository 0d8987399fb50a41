-- An outbox row the relay cannot publish for a reason no retry fixes (a payload over NATS's
-- max_payload, a message the stream refuses) is set aside instead of stalling every row behind it:
-- dead_lettered_at and the reason say so, published_at stays NULL (it never reached the feed), and
-- retention, which purges published rows, keeps it for an operator to look at. The relay then
-- publishes the event's current state as a snapshot, so consumers stay correct.
ALTER TABLE outbox ADD COLUMN dead_lettered_at timestamptz;
ALTER TABLE outbox ADD COLUMN dead_letter_reason text;
ALTER TABLE outbox ADD CONSTRAINT dead_letter_has_a_reason
    CHECK ((dead_lettered_at IS NULL) = (dead_letter_reason IS NULL));

-- The relay's work list leaves dead letters out; an operator finds them by this index.
DROP INDEX outbox_unpublished;
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL AND dead_lettered_at IS NULL;
CREATE INDEX outbox_dead_lettered ON outbox (id) WHERE dead_lettered_at IS NOT NULL;
