"""The gateway's Prometheus metrics (the gRPC edge also has mesh's per-method RPC metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from gateway.audit import Outcome
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
IN_FLIGHT = Gauge(semconv.METRIC_GATEWAY_IN_FLIGHT, "REST requests in progress (streams until their last byte)")
TOKENS = Counter(semconv.METRIC_TOKENS, "Tokens of finished requests, both edges", ["model", "kind"])
EXPERIMENT_REQUESTS = Counter(
    semconv.METRIC_EXPERIMENT_REQUESTS,
    "Requests of each A/B variant by outcome (ok, blocked, or the error's reason), both edges",
    ["experiment", "variant", "status"],
)
EXPERIMENT_DURATION = Histogram(
    semconv.METRIC_EXPERIMENT_DURATION,
    "Duration of each A/B variant's successful requests, both edges",
    ["experiment", "variant"],
    buckets=_LATENCY_BUCKETS,
)


def observe_finished(outcome: Outcome) -> None:
    """Counts one finished or failed request (the live view; Redis keeps the experiment figures)."""
    model = outcome.model or outcome.requested_model or "unknown"
    TOKENS.labels(model, "input").inc(outcome.prompt_tokens)
    TOKENS.labels(model, "output").inc(outcome.completion_tokens)
    status = "blocked" if outcome.finish_reason == "content_filter" else outcome.status
    for experiment, variant in outcome.experiments.items():
        EXPERIMENT_REQUESTS.labels(experiment, variant, status).inc()
        if status == "ok":
            EXPERIMENT_DURATION.labels(experiment, variant).observe(outcome.latency_ms / 1000)
