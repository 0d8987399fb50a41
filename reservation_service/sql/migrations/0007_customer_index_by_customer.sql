-- The per-customer index (migration 0006) led with event_id, like the index of an event's
-- pending holds. Before autovacuum first analyzed the table, the planner took it for CreateHold's
-- lapsed-holds query (event_id = ANY(...) AND lapses_at <= now): with every bench hold under one
-- customer it was the smallest index (deduplicated), and each batch read every hold of the event:
-- 1.8 ms at 20,000 holds instead of 0.01 ms. (That, not the cost of inserting into it, is why the
-- raw batched limit of `slotlock bench holds` halved in 0006.) Led by customer_ref it answers
-- only "this customer's seats on this event"; holds without a customer_ref are never counted
-- and stay out of it.
DROP INDEX reservations_held_by_customer;
CREATE INDEX reservations_held_by_customer ON reservations (customer_ref, event_id)
    WHERE status IN ('PENDING', 'PAID') AND customer_ref <> '';
