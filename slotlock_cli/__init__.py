"""The `slotlock` command for people: run the whole system (`slotlock dev`), benchmarks, and
operator commands. Also home of the embedded dev stack the tests and benchmarks start."""
