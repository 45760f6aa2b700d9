"""Benchmarks that print numbers (run on the stack, never inside tests)."""
