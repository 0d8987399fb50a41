"""The reservation service: events, seat holds and their expiry in PostgreSQL, with every change
written to a transactional outbox and relayed to NATS JetStream."""
