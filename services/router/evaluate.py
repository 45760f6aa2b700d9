"""The offline evaluation behind `llmesh router eval|train|calibrate`.

Queries are split in two halves by a hash of their source name: ``fit`` trains the learned
router and calibrates thresholds, ``report`` is where every number is measured, so nothing is
reported on what it was fitted to.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from dataclasses import dataclass

import numpy as np

from llmesh.router.v1 import router_pb2
from services.router import learned, routellm
from services.router.evaldata import Query
from services.router.load import NoLoad
from services.router.policies import (
    CascadePolicy,
    CostAwarePolicy,
    LearnedPolicy,
    PerplexityPolicy,
    RandomPolicy,
    Signals,
    ThresholdPolicy,
    cost,
)
from services.router.settings import RouterSettings

RANDOM_SEEDS = 50


def split(queries: list[Query]) -> tuple[list[Query], list[Query]]:
    """(fit, report): a fixed half each, chosen by a hash of the source name."""
    fit, report = [], []
    for q in queries:
        (fit if hashlib.sha256(q.source.encode()).digest()[0] % 2 == 0 else report).append(q)
    return fit, report


def features(queries: list[Query]) -> np.ndarray:
    return np.stack([learned.feature_vector(q.signals) for q in queries])


def gains(queries: list[Query], settings: RouterSettings) -> np.ndarray:
    return np.array([q.quality[settings.large_model] - q.quality[settings.small_model] for q in queries])


def train_router(queries: list[Query], settings: RouterSettings, data_key: str) -> learned.LearnedRouter:
    fit, _ = split(queries)
    return learned.train(
        features(fit), gains(fit, settings), "unsaved", {"data_key": data_key, "split": "fit", "queries": len(fit)}
    )


def policies(settings: RouterSettings, router: learned.LearnedRouter, seed: int = 0) -> dict[str, ThresholdPolicy]:
    return {
        "random": RandomPolicy(settings, random.Random(seed)),
        "perplexity": PerplexityPolicy(settings),
        "cascade": CascadePolicy(settings),
        "learned": LearnedPolicy(settings, router),
        "cost-aware": CostAwarePolicy(settings, router, NoLoad()),
    }


def scores(policy: ThresholdPolicy, queries: list[Query], settings: RouterSettings) -> np.ndarray:
    """The policy's own online score of each query, from the signals computed in advance."""

    async def run() -> list[float]:
        request = router_pb2.RouteRequest()
        return [await policy.score(request, Signals(None, [], settings, values=q.signals)) for q in queries]

    return np.array(asyncio.run(run()), dtype=np.float64)


@dataclass
class PolicyResult:
    curve: routellm.Curve
    apgr: float
    cpt50: float
    cpt80: float
    threshold: float
    share: float
    pgr: float
    cost_per_1k_requests: float

    def summary(self) -> dict:
        return {
            "apgr": round(self.apgr, 4),
            "cpt50": round(self.cpt50, 4),
            "cpt80": round(self.cpt80, 4),
            "cost_per_1k_requests": round(self.cost_per_1k_requests, 6),
            "threshold": self.threshold,
            "large_share": round(self.share, 4),
            "pgr": round(self.pgr, 4),
        }


def request_costs(queries: list[Query], settings: RouterSettings) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the cost on the small and on the large model (reference length as output)."""
    prices = {m.name: (m.price_input_per_1k, m.price_output_per_1k) for m in settings.models}
    small = np.array([cost(prices[settings.small_model], q.prompt_tokens, q.reference_tokens) for q in queries])
    large = np.array([cost(prices[settings.large_model], q.prompt_tokens, q.reference_tokens) for q in queries])
    return small, large


def evaluate(queries: list[Query], settings: RouterSettings, router: learned.LearnedRouter) -> dict[str, PolicyResult]:
    weak = np.array([q.quality[settings.small_model] for q in queries])
    strong = np.array([q.quality[settings.large_model] for q in queries])
    small_cost, large_cost = request_costs(queries, settings)
    results = {}
    for name, policy in policies(settings, router).items():
        if name == "random":
            curves = []
            for seed in range(RANDOM_SEEDS):
                seeded = RandomPolicy(settings, random.Random(seed))
                curves.append(routellm.sweep(scores(seeded, queries, settings), weak, strong))
            curve = routellm.mean_curve(curves, np.linspace(0, 1, 101))
            to_large = scores(policy, queries, settings) > policy.threshold
        else:
            values = scores(policy, queries, settings)
            curve = routellm.sweep(values, weak, strong)
            to_large = values > policy.threshold
        # The cascade always pays for the small answer, escalated or not.
        wasted = small_cost if name == "cascade" else np.zeros_like(small_cost)
        per_request = np.where(to_large, large_cost + wasted, small_cost)
        quality = np.where(to_large, strong, weak).mean()
        results[name] = PolicyResult(
            curve,
            routellm.apgr(curve),
            routellm.cpt(curve, 0.5),
            routellm.cpt(curve, 0.8),
            float(policy.threshold),
            float(to_large.mean()),
            float(routellm.pgr(quality, weak.mean(), strong.mean())),
            float(per_request.mean() * 1000),
        )
    return results


def baselines(queries: list[Query], settings: RouterSettings) -> dict[str, dict]:
    small_cost, large_cost = request_costs(queries, settings)
    return {
        model: {
            "mean_quality": round(float(np.mean([q.quality[model] for q in queries])), 4),
            "cost_per_1k_requests": round(float(c.mean() * 1000), 6),
        }
        for model, c in ((settings.small_model, small_cost), (settings.large_model, large_cost))
    }


def oracle(queries: list[Query], settings: RouterSettings) -> routellm.Curve:
    """The upper bound: a router that knows each query's true gain."""
    weak = np.array([q.quality[settings.small_model] for q in queries])
    strong = np.array([q.quality[settings.large_model] for q in queries])
    return routellm.sweep(strong - weak, weak, strong)


def calibrate(policy: ThresholdPolicy, queries: list[Query], settings: RouterSettings, share: float) -> float:
    return routellm.threshold_for_share(scores(policy, queries, settings), share)
