"""Benchmarks that drive a running stack."""
