"""Live load of the Triton models, from Triton's Prometheus metrics endpoint.

Read at most every ``load_refresh_s`` (a scrape costs a few ms; routing must not pay it on every
request): the queue time per request since the previous read, and the requests pending now,
per model. ``factors()`` turns them into a multiplier on a model's price: 1 when idle, growing
as the queue time approaches ``load_queue_ms`` and pending requests approach ``load_pending``.
"""

from __future__ import annotations

import logging
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

QUEUE_US = "nv_inference_queue_duration_us"
REQUESTS = "nv_inference_request_success"
PENDING = "nv_inference_pending_request_count"


def parse(text: str) -> dict[str, dict[str, float]]:
    """model -> {queue_us, requests, pending} (counters summed over versions)."""
    wanted = {QUEUE_US: "queue_us", REQUESTS: "requests", PENDING: "pending"}
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = wanted.get(sample.name) or wanted.get(sample.name.removesuffix("_total"))
            model = sample.labels.get("model")
            if key and model:
                entry = out.setdefault(model, {"queue_us": 0.0, "requests": 0.0, "pending": 0.0})
                entry[key] += sample.value
    return out


def load_factor(queue_ms: float, pending: float, queue_ms_limit: float, pending_limit: float) -> float:
    return 1.0 + queue_ms / queue_ms_limit + pending / pending_limit


class LoadMonitor:
    def __init__(self, settings, client: httpx.AsyncClient | None = None) -> None:
        self.url = f"http://{settings.triton_metrics_addr}/metrics"
        self.refresh_s = settings.load_refresh_s
        self.queue_ms_limit = settings.load_queue_ms
        self.pending_limit = settings.load_pending
        self._client = client or httpx.AsyncClient(timeout=0.5)
        self._last: dict[str, dict[str, float]] = {}
        self._factors: dict[str, float] = {}
        self._read_at = -float("inf")

    def update(self, now: dict[str, dict[str, float]]) -> dict[str, float]:
        factors = {}
        for model, current in now.items():
            before = self._last.get(model, {"queue_us": 0.0, "requests": 0.0})
            served = current["requests"] - before["requests"]
            queue_ms = (current["queue_us"] - before["queue_us"]) / served / 1000.0 if served > 0 else 0.0
            factors[model] = load_factor(
                max(queue_ms, 0.0), current["pending"], self.queue_ms_limit, self.pending_limit
            )
        self._last, self._factors = now, factors
        return factors

    async def factors(self) -> dict[str, float]:
        """Per-model price multipliers; the last known ones (or none) when Triton cannot be read."""
        if time.monotonic() - self._read_at >= self.refresh_s:
            self._read_at = time.monotonic()
            try:
                response = await self._client.get(self.url)
                self.update(parse(response.raise_for_status().text))
            except httpx.HTTPError as error:
                log.warning("triton metrics unavailable", extra={"url": self.url, "error": str(error)})
        return self._factors

    async def close(self) -> None:
        await self._client.aclose()


class NoLoad:
    """Every model idle: the offline evaluation, and tests."""

    async def factors(self) -> dict[str, float]:
        return {}

    async def close(self) -> None:
        pass
