-- The W3C traceparent of the transaction that wrote the change (NULL with tracing off). The relay
-- sends it on as the NATS message's traceparent header, so the availability update that the
-- change causes joins the trace of the CreateHold (or other call) that caused it.
ALTER TABLE outbox ADD COLUMN trace_context text;
