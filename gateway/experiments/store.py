"""Experiments in Redis: the definitions, and every variant's running figures.

Keys (all under ``llmesh:exp:``):

- ``defs`` hash name -> definition JSON, and ``version``, bumped on every change: gateways poll
  the version and reload the definitions when it moves (hot reload without restart);
- ``m:{experiment}:{variant}`` hash of counters and, per continuous metric, ``_n``, ``_sum`` and
  ``_sumsq`` (enough for means, variances and Welch's t-test);
- ``s:{experiment}:{variant}:{metric}`` the latest samples of a metric (percentiles, charts);
- ``req:{request id}`` the request's recorded assignments, kept a week for ``/v1/feedback``;
- ``fb:{request id}`` marks feedback already given (one score per request).

A shadow's figures live under the variant name ``shadow:{name}``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis.asyncio as redis

from gateway.experiments.definitions import Experiment
from mesh.redis_client import async_redis, decoded, decoded_fields
from mesh.settings import MeshSettings

PREFIX = "llmesh:exp:"
DEFS = PREFIX + "defs"
VERSION = PREFIX + "version"
# Recent samples kept per metric: enough for stable p50/p95 and a chart, bounded memory.
SAMPLE_CAP = 2000
REQUEST_TTL_S = 7 * 24 * 3600

# Continuous metrics (mean, CI, Welch's t) and rates (two-proportion z) the report covers.
CONTINUOUS = ("latency_s", "ttft_s", "output_tokens", "cost", "feedback")
RATES = ("errors", "blocked")
SAMPLED = ("latency_s", "ttft_s")


def shadow_key(name: str) -> str:
    return f"shadow:{name}"


def _metrics_key(experiment: str, variant: str) -> str:
    return f"{PREFIX}m:{experiment}:{variant}"


def _samples_key(experiment: str, variant: str, metric: str) -> str:
    return f"{PREFIX}s:{experiment}:{variant}:{metric}"


@dataclass(frozen=True)
class Outcome:
    """How one request went, as recorded for each experiment it was counted in."""

    error: bool = False
    latency_s: float = 0.0
    # Streams only: the unary path has no first token to time.
    ttft_s: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    blocked: bool = False
    model: str = ""

    def values(self) -> dict[str, float]:
        """The continuous metrics this outcome has a value for."""
        # A failed request's latency measures how fast it failed, not the variant's speed.
        if self.error:
            return {}
        values = {"latency_s": self.latency_s, "output_tokens": self.output_tokens, "cost": self.cost}
        if self.ttft_s is not None:
            values["ttft_s"] = self.ttft_s
        return values


@dataclass(frozen=True)
class ShadowComparison:
    """A primary answer next to its shadow's."""

    shadow_error: bool
    primary_latency_s: float
    shadow_latency_s: float
    primary_tokens: int
    shadow_tokens: int
    same_text: bool
    same_model: bool


def _add(pipe, key: str, metric: str, value: float) -> None:
    pipe.hincrby(key, f"{metric}_n", 1)
    pipe.hincrbyfloat(key, f"{metric}_sum", value)
    pipe.hincrbyfloat(key, f"{metric}_sumsq", value * value)


def _sample(pipe, key: str, value: float) -> None:
    pipe.lpush(key, value)
    pipe.ltrim(key, 0, SAMPLE_CAP - 1)


class ExperimentStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @classmethod
    def from_url(cls, url: str, settings: MeshSettings | None = None) -> ExperimentStore:
        return cls(async_redis(settings or MeshSettings(redis_url=url), url))

    async def close(self) -> None:
        await self.redis.aclose()

    # Definitions.

    async def version(self) -> int:
        return int(await self.redis.get(VERSION) or 0)

    async def load(self) -> list[Experiment]:
        raw = await self.redis.hgetall(DEFS)
        return sorted((Experiment.model_validate_json(value) for value in raw.values()), key=lambda e: e.name)

    async def get(self, name: str) -> Experiment | None:
        raw = await self.redis.hget(DEFS, name)
        return None if raw is None else Experiment.model_validate_json(raw)

    async def save(self, experiments: Iterable[Experiment]) -> None:
        experiments = list(experiments)
        if not experiments:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(DEFS, mapping={experiment.name: experiment.model_dump_json() for experiment in experiments})
            pipe.incr(VERSION)
            await pipe.execute()

    async def delete(self, name: str, *, keep_results: bool = False) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(DEFS, name)
            pipe.incr(VERSION)
            deleted, _ = await pipe.execute()
        if not keep_results:
            await self.reset(name)
        return bool(deleted)

    async def reset(self, name: str) -> None:
        """Forget an experiment's figures (a restart with a new salt should start from zero)."""
        keys = [key async for key in self.redis.scan_iter(match=f"{PREFIX}[ms]:{name}:*", count=500)]
        if keys:
            await self.redis.delete(*keys)

    # Figures.

    async def record(self, assignments: Mapping[str, str], outcome: Outcome) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for experiment, variant in assignments.items():
                key = _metrics_key(experiment, variant)
                pipe.hincrby(key, "requests", 1)
                pipe.hincrby(key, "errors", int(outcome.error))
                pipe.hincrby(key, "blocked", int(outcome.blocked))
                pipe.hincrby(key, "input_tokens", outcome.input_tokens)
                pipe.hincrby(key, "output_tokens", outcome.output_tokens)
                for metric, value in outcome.values().items():
                    _add(pipe, key, metric, value)
                    if metric in SAMPLED:
                        _sample(pipe, _samples_key(experiment, variant, metric), value)
                if outcome.model:
                    pipe.hincrby(key, f"model:{outcome.model}", 1)
            await pipe.execute()

    async def remember(self, request_id: str, assignments: Mapping[str, str], tenant: str) -> None:
        """Keeps a request's assignments, and whose request it was, for feedback on it; written
        when it is assigned, so that the record exists by the time a client has the answer to score."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(f"{PREFIX}req:{request_id}", mapping={name: variant for name, variant in assignments.items()})
            pipe.set(f"{PREFIX}req-tenant:{request_id}", tenant, ex=REQUEST_TTL_S)
            pipe.expire(f"{PREFIX}req:{request_id}", REQUEST_TTL_S)
            await pipe.execute()

    async def feedback(self, request_id: str, score: float, tenant: str) -> dict[str, str] | None:
        """Adds a score to the variants the request was served by; None when the request is
        unknown (never in an experiment, expired, or another tenant's: that is not told apart, so
        request ids of other tenants cannot be probed). A second score for a request replaces
        nothing: the first one counts."""
        owner = await self.redis.get(f"{PREFIX}req-tenant:{request_id}")
        if owner is None or decoded(owner) != tenant:
            return None
        assignments = decoded_fields(await self.redis.hgetall(f"{PREFIX}req:{request_id}"))
        if not assignments:
            return None
        if await self.redis.set(f"{PREFIX}fb:{request_id}", 1, nx=True, ex=REQUEST_TTL_S):
            async with self.redis.pipeline(transaction=False) as pipe:
                for experiment, variant in assignments.items():
                    _add(pipe, _metrics_key(experiment, variant), "feedback", score)
                await pipe.execute()
        return assignments

    async def record_shadow(self, experiment: str, shadow: str, comparison: ShadowComparison) -> None:
        key = _metrics_key(experiment, shadow_key(shadow))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(key, "requests", 1)
            pipe.hincrby(key, "errors", int(comparison.shadow_error))
            if not comparison.shadow_error:
                pipe.hincrby(key, "same_text", int(comparison.same_text))
                pipe.hincrby(key, "same_model", int(comparison.same_model))
                _add(pipe, key, "latency_s", comparison.shadow_latency_s)
                _add(pipe, key, "primary_latency_s", comparison.primary_latency_s)
                _add(pipe, key, "latency_diff_s", comparison.shadow_latency_s - comparison.primary_latency_s)
                _add(pipe, key, "output_tokens", comparison.shadow_tokens)
                _add(pipe, key, "primary_output_tokens", comparison.primary_tokens)
                _sample(pipe, _samples_key(experiment, shadow_key(shadow), "latency_s"), comparison.shadow_latency_s)
            await pipe.execute()

    async def figures(self, experiment: Experiment) -> dict[str, dict]:
        """Each variant's counters and samples (the shadow's too, if any), for the report."""
        names = [variant.name for variant in experiment.variants]
        if experiment.shadow is not None:
            names.append(shadow_key(experiment.shadow.name))
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(_metrics_key(experiment.name, name))
                for metric in SAMPLED:
                    pipe.lrange(_samples_key(experiment.name, name, metric), 0, -1)
            replies = await pipe.execute()
        figures = {}
        step = 1 + len(SAMPLED)
        for index, name in enumerate(names):
            counters, *samples = replies[index * step : (index + 1) * step]
            figures[name] = {
                "counters": {key.decode(): _number(value) for key, value in counters.items()},
                "samples": {
                    metric: [float(v) for v in values] for metric, values in zip(SAMPLED, samples, strict=True)
                },
            }
        return figures


def _number(raw: bytes) -> float:
    value = float(raw)
    return int(value) if value.is_integer() and math.isfinite(value) else value
