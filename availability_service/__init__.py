"""The availability service: an in-memory projection of every event's seats, rebuilt from the
JetStream feed's last message per event and kept live from its tail, served over gRPC
(get, list, and a conflating watch stream)."""
