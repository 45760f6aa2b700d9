"""The offline evaluation behind `llmesh router eval|train|calibrate`.

Data: the cached answers of both tiers (``tools.router.collect``), judged by
``tools.router.judge``. Three sets, never mixed:

* ``fit`` (template items, one half): the learned router, the PPO policy and every threshold
  are fitted or calibrated here, and nowhere else;
* ``report`` (template items, the other half): the held-out split every headline number is on;
* ``heldout`` (hand-written items, ``tools/router/heldout.py``): another kind of prompt,
  reported on its own.

Each policy is measured with its own online ``score`` over signals that came from the real
stack, so what is measured is what runs.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import numpy as np

from llmesh.router.v1 import router_pb2
from services.router import learned
from services.router.load import LoadSource, NoLoad
from services.router.policies import (
    CascadePolicy,
    CostAwarePolicy,
    LearnedPolicy,
    PerplexityPolicy,
    PPOPolicy,
    RandomPolicy,
    ThresholdPolicy,
    cost,
)
from services.router.ppo import PPORouter
from services.router.settings import RouterSettings
from services.router.signals import Signals
from tools.router import judge, routellm

RANDOM_SEEDS = 50
SETS = ("fit", "report", "heldout")


@dataclass
class Query:
    """One eval item with everything a router or the metrics need."""

    id: str
    source: str
    split: str
    category: str
    prompt: str
    # model -> judged quality of its answer (0..1), prompt tokens, answer tokens.
    quality: dict[str, float]
    prompt_tokens: dict[str, int]
    output_tokens: dict[str, int]
    # signal name -> value, as the online router computes it (from the real stack).
    signals: dict[str, float] = field(default_factory=dict)


def queries(rows: list[dict]) -> list[Query]:
    return [
        Query(
            row["id"],
            row["source"],
            row["split"],
            row["category"],
            row["prompt"],
            {m: judge.score(a["text"], row["check"], row["prompt"]) for m, a in row["answers"].items()},
            dict(row["prompt_tokens"]),
            {m: a["tokens"] for m, a in row["answers"].items()},
            dict(row["signals"]),
        )
        for row in rows
    ]


def by_set(items: list[Query]) -> dict[str, list[Query]]:
    return {name: [q for q in items if q.split == name] for name in SETS}


def features(items: list[Query]) -> np.ndarray:
    return np.stack([learned.feature_vector(q.signals) for q in items])


def qualities(items: list[Query], settings: RouterSettings) -> tuple[np.ndarray, np.ndarray]:
    weak = np.array([q.quality[settings.small_model] for q in items])
    strong = np.array([q.quality[settings.large_model] for q in items])
    return weak, strong


def gains(items: list[Query], settings: RouterSettings) -> np.ndarray:
    weak, strong = qualities(items, settings)
    return strong - weak


def request_costs(items: list[Query], settings: RouterSettings) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the list-price cost of its answer on the small and on the large model."""
    prices = {m.name: (m.price_input_per_1k, m.price_output_per_1k) for m in settings.models}

    def on(model: str) -> np.ndarray:
        return np.array([cost(prices[model], q.prompt_tokens[model], q.output_tokens[model]) for q in items])

    return on(settings.small_model), on(settings.large_model)


def train_router(fit: list[Query], settings: RouterSettings, data_key: str, l2: float = 1.0) -> learned.LearnedRouter:
    return learned.train(
        features(fit), gains(fit, settings), "unsaved", {"data_key": data_key, "split": "fit", "queries": len(fit)}, l2
    )


def policies(
    settings: RouterSettings,
    router: learned.LearnedRouter,
    ppo: PPORouter | None,
    load: LoadSource | None = None,
    seed: int = 0,
) -> dict[str, ThresholdPolicy]:
    out = {
        "random": RandomPolicy(settings, random.Random(seed)),
        "perplexity": PerplexityPolicy(settings),
        "cascade": CascadePolicy(settings),
        "learned": LearnedPolicy(settings, router),
        "cost-aware": CostAwarePolicy(settings, router, load or NoLoad()),
    }
    if ppo is not None:
        out["ppo"] = PPOPolicy(settings, ppo)
    return out


def scores(policy: ThresholdPolicy, items: list[Query], settings: RouterSettings) -> np.ndarray:
    """The policy's own online score of each query, from the signals collected in advance."""

    async def run() -> list[float]:
        request = router_pb2.RouteRequest()
        return [await policy.score(request, Signals(None, [], settings, values=q.signals)) for q in items]

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
    quality: float
    cost_per_1k_requests: float
    # Cost per 1k requests at each point of the curve (the x axis of the cost-quality plot).
    curve_cost_per_1k: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def summary(self) -> dict:
        return {
            "apgr": round(self.apgr, 4),
            "cpt50": round(self.cpt50, 4),
            "cpt80": round(self.cpt80, 4),
            "cost_per_1k_requests": round(self.cost_per_1k_requests, 6),
            "threshold": self.threshold,
            "large_share": round(self.share, 4),
            "pgr": round(self.pgr, 4),
            "quality": round(self.quality, 4),
        }


def evaluate(
    items: list[Query], settings: RouterSettings, named: dict[str, ThresholdPolicy]
) -> dict[str, PolicyResult]:
    weak, strong = qualities(items, settings)
    small_cost, large_cost = request_costs(items, settings)
    results = {}
    for name, policy in named.items():
        if name == "random":
            curves = []
            for seed in range(RANDOM_SEEDS):
                seeded = RandomPolicy(settings, random.Random(seed))
                curves.append(routellm.sweep(scores(seeded, items, settings), weak, strong))
            curve = routellm.mean_curve(curves, np.linspace(0, 1, 101))
            to_large = scores(policy, items, settings) > policy.threshold
            curve_cost = (small_cost.mean() + curve.share * (large_cost.mean() - small_cost.mean())) * 1000
        else:
            values = scores(policy, items, settings)
            curve = routellm.sweep(values, weak, strong)
            to_large = values > policy.threshold
        # The cascade pays for the small answer on every request, escalated or not.
        wasted = small_cost if name == "cascade" else np.zeros_like(small_cost)
        if name != "random":
            curve_cost = np.array(
                [np.where(values > t, large_cost + wasted, small_cost).mean() * 1000 for t in curve.thresholds]
            )
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
            float(quality),
            float(per_request.mean() * 1000),
            curve_cost,
        )
    return results


def baselines(items: list[Query], settings: RouterSettings) -> dict[str, dict]:
    small_cost, large_cost = request_costs(items, settings)
    return {
        model: {
            "mean_quality": round(float(np.mean([q.quality[model] for q in items])), 4),
            "cost_per_1k_requests": round(float(c.mean() * 1000), 6),
        }
        for model, c in ((settings.small_model, small_cost), (settings.large_model, large_cost))
    }


def oracle(items: list[Query], settings: RouterSettings) -> routellm.Curve:
    """The upper bound: a router that knows each query's true gain."""
    weak, strong = qualities(items, settings)
    return routellm.sweep(strong - weak, weak, strong)


def by_category(items: list[Query], settings: RouterSettings) -> dict[str, dict]:
    out = {}
    for category in sorted({q.category for q in items}):
        chosen = [q for q in items if q.category == category]
        weak, strong = qualities(chosen, settings)
        out[category] = {
            "items": len(chosen),
            settings.small_model: round(float(weak.mean()), 3),
            settings.large_model: round(float(strong.mean()), 3),
        }
    return out


def calibrate(policy: ThresholdPolicy, items: list[Query], settings: RouterSettings, share: float) -> float:
    return routellm.threshold_for_share(scores(policy, items, settings), share)


class FixedLoad:
    """Load factors held constant: the cost-aware policy under a given load, offline."""

    def __init__(self, factors: dict[str, float]) -> None:
        self._factors = factors

    async def factors(self) -> dict[str, float]:
        return self._factors

    async def close(self) -> None:
        pass


def load_scenarios(items: list[Query], settings: RouterSettings, router: learned.LearnedRouter) -> dict[str, dict]:
    """The cost-aware policy at its configured threshold while the large model's engine is busy:
    its price rises with the load factor (services/router/load.py), so fewer requests go to it."""
    weak, strong = qualities(items, settings)
    out = {}
    for label, running in (
        ("idle", 0.0),
        ("large busy (32 running)", 32.0),
        ("large saturated (64 running, 8 waiting)", 64.0),
    ):
        waiting = 8.0 if running >= 64 else 0.0
        factor = 1.0 + running / settings.load_running + waiting / settings.load_waiting
        policy = CostAwarePolicy(settings, router, FixedLoad({settings.large_model: factor}))
        to_large = scores(policy, items, settings) > policy.threshold
        quality = np.where(to_large, strong, weak).mean()
        out[label] = {
            "large_price_factor": factor,
            "large_share": round(float(to_large.mean()), 4),
            "pgr": round(float(routellm.pgr(quality, weak.mean(), strong.mean())), 4),
        }
    return out


def budget_scenario(
    items: list[Query], settings: RouterSettings, policy: ThresholdPolicy, share_of_all_large: float
) -> dict:
    """A tenant whose daily budget is ``share_of_all_large`` of what sending every request to the
    large model would cost: requests in order, the policy decides, and once the budget is spent
    every further request goes to the small model (``LLMESH_BUDGET_EXHAUSTED_ACTION=degrade``)."""
    weak, strong = qualities(items, settings)
    small_cost, large_cost = request_costs(items, settings)
    budget = share_of_all_large * large_cost.sum()
    spent, chosen = 0.0, []
    for wants_large, s, lc in zip(
        scores(policy, items, settings) > policy.threshold, small_cost, large_cost, strict=True
    ):
        large = bool(wants_large) and spent < budget
        spent += lc if large else s
        chosen.append(large)
    to_large = np.array(chosen)
    quality = np.where(to_large, strong, weak).mean()
    return {
        "budget_share_of_all_large": share_of_all_large,
        "spent_share_of_all_large": round(spent / large_cost.sum(), 4),
        "large_share": round(float(to_large.mean()), 4),
        "pgr": round(float(routellm.pgr(quality, weak.mean(), strong.mean())), 4),
    }
