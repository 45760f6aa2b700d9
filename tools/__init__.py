"""Offline tools (benchmarks, evaluations, training helpers): no serving process imports them."""
