-- The request bounds of the contract (protos/slotlock/v1, `(slotlock.v1.bounds)` options), kept by
-- the database too: the services check them at the edge, these are the last line of defence, so
-- no row can grow a message past NATS's payload limit or a page past gRPC's message limit.
-- NOT VALID: rows written before these bounds existed are left alone; every new write is checked.
ALTER TABLE events
    ADD CONSTRAINT code_length CHECK (char_length(code) <= 100) NOT VALID,
    ADD CONSTRAINT experience_title_length CHECK (char_length(experience_title) <= 200) NOT VALID,
    ADD CONSTRAINT time_zone_length CHECK (char_length(time_zone) <= 64) NOT VALID,
    ADD CONSTRAINT currency_length CHECK (char_length(currency) <= 8) NOT VALID;

ALTER TABLE reservations
    ADD CONSTRAINT customer_ref_length CHECK (char_length(customer_ref) <= 200) NOT VALID,
    ADD CONSTRAINT idempotency_key_length CHECK (char_length(idempotency_key) <= 200) NOT VALID,
    ADD CONSTRAINT provider_order_id_length CHECK (char_length(provider_order_id) <= 128) NOT VALID,
    ADD CONSTRAINT virtual_account_number_length
        CHECK (char_length(virtual_account_number) <= 64) NOT VALID,
    ADD CONSTRAINT qr_code_length CHECK (char_length(qr_code) <= 1024) NOT VALID,
    ADD CONSTRAINT qr_code_url_length CHECK (char_length(qr_code_url) <= 1024) NOT VALID,
    ADD CONSTRAINT payment_reference_length CHECK (char_length(payment_reference) <= 200) NOT VALID,
    ADD CONSTRAINT refund_reason_length CHECK (char_length(refund_reason) <= 500) NOT VALID;
