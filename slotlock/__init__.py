"""What both slotlock services truly share: the generated `slotlock.v1` contract, the JetStream
feed's naming, the error categories and their one mapping to gRPC status codes."""
