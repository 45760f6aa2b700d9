"""The gateway's Prometheus metrics (the gRPC edge also has mesh's per-method RPC metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from mesh import semconv

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter(semconv.METRIC_GATEWAY_REQUESTS, "REST requests", ["route", "status"])
DURATION = Histogram(
    semconv.METRIC_GATEWAY_DURATION,
    "REST request duration (to the last byte for streams)",
    ["route", "status"],
    buckets=_LATENCY_BUCKETS,
)
TTFT = Histogram(
    semconv.METRIC_GATEWAY_TTFT,
    "Time from a streaming request to its first released text, both edges",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
