"""Generated stubs for the slotlock.v1 contract. Do not edit: see scripts/gen_protos.py."""
