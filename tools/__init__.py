"""Offline tools: benchmarks, evaluations, dataset builders; no serving process imports them."""
