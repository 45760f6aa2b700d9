"""Live load of the engines, from the metrics they report on Triton's Prometheus endpoint.

Each engine model reports the requests it is generating for and the requests queued behind them
(``llmesh_engine_requests_running`` / ``_waiting``, see services/inference/triton_models/engine.py).
Read at most every ``load_refresh_s`` (a scrape costs a few ms; routing must not pay it on every
request). ``factors()`` turns them into a multiplier on a model's price: 1 when idle, one more
for every ``load_running`` requests in the batch (each slows every other) and for every
``load_waiting`` requests queued (each waits for a free slot).
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mesh import semconv

log = logging.getLogger(__name__)


def parse(text: str) -> dict[str, dict[str, float]]:
    """model -> {running, waiting}."""
    wanted = {semconv.METRIC_ENGINE_RUNNING: "running", semconv.METRIC_ENGINE_WAITING: "waiting"}
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = wanted.get(sample.name)
            model = sample.labels.get("model")
            if key and model:
                out.setdefault(model, {"running": 0.0, "waiting": 0.0})[key] += sample.value
    return out


class LoadSource(Protocol):
    """Each model's load factor (1.0 when idle), as the cost-aware policy reads it."""

    async def factors(self) -> dict[str, float]: ...

    async def close(self) -> None: ...


def load_factor(running: float, waiting: float, running_limit: float, waiting_limit: float) -> float:
    return 1.0 + running / running_limit + waiting / waiting_limit


class LoadMonitor:
    def __init__(self, settings, client: httpx.AsyncClient | None = None) -> None:
        self.url = f"http://{settings.triton_metrics_addr}/metrics"
        self.refresh_s = settings.load_refresh_s
        self.running_limit = settings.load_running
        self.waiting_limit = settings.load_waiting
        self._client = client or httpx.AsyncClient(timeout=0.5)
        self._factors: dict[str, float] = {}
        self._read_at = -float("inf")

    def update(self, now: dict[str, dict[str, float]]) -> dict[str, float]:
        self._factors = {
            model: load_factor(load["running"], load["waiting"], self.running_limit, self.waiting_limit)
            for model, load in now.items()
        }
        return self._factors

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
