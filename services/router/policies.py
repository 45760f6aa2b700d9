"""Routing policies: each turns a request and what is known about its prompt into a Decision.

The router runs the policy named by ``LLMESH_ROUTE_POLICY`` (or a per-tenant / per-experiment
override, see ``RouterSettings``), looked up in ``POLICIES``; a new policy is a class with a
``name`` and ``async decide(request, signals)``, added there.

Threshold policies also expose ``async score(request, signals)``: a number that grows with how
much the request needs the large model, compared with the policy's threshold. The offline
evaluation (``llmesh router eval``) sweeps that threshold over the very same ``score``, so what
is measured is what runs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from llmesh.router.v1 import router_pb2
from services.router.signals import SMALL_ANSWER_LOGPROB, Signals, SignalUnavailable

if TYPE_CHECKING:
    from services.router.learned import LearnedRouter
    from services.router.load import LoadSource
    from services.router.ppo import PPORouter
    from services.router.settings import RouterSettings


@dataclass(frozen=True)
class Decision:
    model: str
    # Short and human-readable, e.g. "perplexity 41.2 > 30.0".
    reason: str
    # Cascade: when the answer of ``model`` has a mean token log-prob below ``escalate_below``,
    # answer again with ``escalate_to`` (empty: no cascade).
    escalate_to: str = ""
    escalate_below: float = 0.0


class Policy(Protocol):
    name: str

    async def decide(self, request: router_pb2.RouteRequest, signals: Signals) -> Decision: ...


class ThresholdPolicy:
    """Large model when ``score`` exceeds ``threshold``; subclasses define the score."""

    name = ""
    label = "score"

    def __init__(self, settings: RouterSettings, threshold: float) -> None:
        self.threshold = threshold
        self.small_model = settings.small_model
        self.large_model = settings.large_model

    async def score(self, request: router_pb2.RouteRequest, signals: Signals) -> float:
        raise NotImplementedError

    def describe(self, value: float) -> str:
        return f"{value:.1f}"

    async def decide(self, request: router_pb2.RouteRequest, signals: Signals) -> Decision:
        value = await self.score(request, signals)
        shown, limit = self.describe(value), self.describe(self.threshold)
        if value > self.threshold:
            return Decision(self.large_model, f"{self.label} {shown} > {limit}")
        return Decision(self.small_model, f"{self.label} {shown} <= {limit}")


class PerplexityPolicy(ThresholdPolicy):
    """Prompts the small model finds surprising (high perplexity) go to the large model."""

    name = "perplexity"
    label = "perplexity"

    def __init__(self, settings: RouterSettings) -> None:
        super().__init__(settings, settings.perplexity_threshold)

    async def score(self, request: router_pb2.RouteRequest, signals: Signals) -> float:
        return await signals.perplexity()


class RandomPolicy(ThresholdPolicy):
    """The baseline: the large model for a random share of requests (RouteLLM's random router)."""

    name = "random"
    label = "random"

    def __init__(self, settings: RouterSettings, rng: random.Random | None = None) -> None:
        super().__init__(settings, 1.0 - settings.random_large_share)
        self.rng = rng or random.Random()

    async def score(self, request: router_pb2.RouteRequest, signals: Signals) -> float:
        return self.rng.random()

    def describe(self, value: float) -> str:
        return f"{value:.2f}"


class FixedPolicy:
    """Always the same model (a baseline, and the way to pin a tenant)."""

    name = "fixed"

    def __init__(self, settings: RouterSettings) -> None:
        self.model = settings.fixed_model

    async def decide(self, request: router_pb2.RouteRequest, signals: Signals) -> Decision:
        return Decision(self.model, f"fixed {self.model}")


class CascadePolicy(ThresholdPolicy):
    """Small model first; the gateway escalates to the large model when the small answer's mean
    token log-prob is below ``cascade_min_logprob``. A streaming answer cannot be taken back once
    text is sent, so streaming requests are routed up front by perplexity instead.

    As a threshold policy (offline), the score is minus the small answer's mean log-prob.
    """

    name = "cascade"
    label = "small answer logprob"

    def __init__(self, settings: RouterSettings) -> None:
        super().__init__(settings, -settings.cascade_min_logprob)
        self.streaming = PerplexityPolicy(settings)

    async def score(self, request: router_pb2.RouteRequest, signals: Signals) -> float:
        if SMALL_ANSWER_LOGPROB not in signals.values:
            raise SignalUnavailable("the small answer is only known after generation")
        return -signals.values[SMALL_ANSWER_LOGPROB]

    async def decide(self, request: router_pb2.RouteRequest, signals: Signals) -> Decision:
        if request.stream:
            decision = await self.streaming.decide(request, signals)
            return Decision(decision.model, f"cascade (streaming, no escalation): {decision.reason}")
        return Decision(
            self.small_model,
            f"cascade: {self.small_model} first, escalate below logprob {-self.threshold:.2f}",
            escalate_to=self.large_model,
            escalate_below=-self.threshold,
        )


def cost(model_price: tuple[float, float], prompt_tokens: float, output_tokens: float) -> float:
    """Currency for one request: prices are per 1,000 input and output tokens."""
    return (prompt_tokens * model_price[0] + output_tokens * model_price[1]) / 1000.0


class LearnedPolicy(ThresholdPolicy):
    """A classifier trained offline (``llmesh router train``) on which model answers better."""

    name = "learned"
    label = "p(large better)"

    def __init__(self, settings: RouterSettings, model: LearnedRouter | None = None) -> None:
        from services.router.learned import load_router

        super().__init__(settings, settings.learned_threshold)
        self.model = model or load_router(settings.learned_router_path)

    async def score(self, request: router_pb2.RouteRequest, signals: Signals) -> float:
        return self.model.p_large_better(await self.model.featurize(signals))

    def describe(self, value: float) -> str:
        return f"{value:.2f}"

    async def decide(self, request: router_pb2.RouteRequest, signals: Signals) -> Decision:
        decision = await super().decide(request, signals)
        return Decision(decision.model, f"{decision.reason} ({self.model.version})")


class CostAwarePolicy(ThresholdPolicy):
    """Cheapest model for the quality it is expected to give.

    The large model is worth its extra cost when the quality it is predicted to add (the learned
    router's gain model, in mean log-prob per token) per unit of extra effective cost exceeds the
    threshold (``cost_min_gain_per_currency``): the Lagrangian form of "minimise cost subject
    to a quality target". Effective cost is the price-list cost times a load factor from Triton
    (queue time and pending requests), so a saturated model gets dearer.
    """

    name = "cost-aware"
    label = "gain per extra cost"

    def __init__(
        self, settings: RouterSettings, model: LearnedRouter | None = None, load: LoadSource | None = None
    ) -> None:
        from services.router.learned import load_router
        from services.router.load import LoadMonitor

        super().__init__(settings, settings.cost_min_gain_per_currency)
        self.model = model or load_router(settings.learned_router_path)
        self.load: LoadSource = load if load is not None else LoadMonitor(settings)
        self.output_tokens = settings.expected_output_tokens
        prices = {m.name: (m.price_input_per_1k, m.price_output_per_1k) for m in settings.models}
        self.small_price, self.large_price = prices[self.small_model], prices[self.large_model]

    async def extra_cost(self, signals: Signals) -> float:
        tokens = signals.prompt_tokens()
        small = cost(self.small_price, tokens, self.output_tokens)
        large = cost(self.large_price, tokens, self.output_tokens)
        factors = await self.load.factors()
        small *= factors.get(self.small_model, 1.0)
        large *= factors.get(self.large_model, 1.0)
        return large - small

    async def score(self, request: router_pb2.RouteRequest, signals: Signals) -> float:
        gain = self.model.expected_gain(await self.model.featurize(signals))
        extra = await self.extra_cost(signals)
        if extra <= 0:  # the large model is no dearer (e.g. the small one is saturated)
            return math.inf if gain > 0 else gain
        return gain / extra

    def describe(self, value: float) -> str:
        return f"{value:.3g}"


class PPOPolicy(ThresholdPolicy):
    """A policy network trained with PPO on reward = judged quality − λ · cost (services/router/ppo.py).

    The score is the request's indifference price of quality, the threshold the configured λ
    (``LLMESH_PPO_LAMBDA``): the large model when the network would still pay for it at that price.
    """

    name = "ppo"
    label = "indifference λ"

    def __init__(self, settings: RouterSettings, model: PPORouter | None = None) -> None:
        from services.router.learned import feature_vector
        from services.router.ppo import load_ppo

        super().__init__(settings, settings.ppo_lambda)
        self.model = model or load_ppo(settings.ppo_router_path)
        self._features = feature_vector

    async def score(self, request: router_pb2.RouteRequest, signals: Signals) -> float:
        values = {"perplexity": await signals.perplexity(), "prompt_tokens": signals.prompt_tokens()}
        return self.model.indifference_lambda(self._features({**values, **signals.lexical()}))

    def describe(self, value: float) -> str:
        return f"{value:.3g}"

    async def decide(self, request: router_pb2.RouteRequest, signals: Signals) -> Decision:
        decision = await super().decide(request, signals)
        return Decision(decision.model, f"{decision.reason} (ppo {self.model.version})")


POLICIES: dict[str, Callable[[RouterSettings], Policy]] = {
    PerplexityPolicy.name: PerplexityPolicy,
    RandomPolicy.name: RandomPolicy,
    FixedPolicy.name: FixedPolicy,
    CascadePolicy.name: CascadePolicy,
    LearnedPolicy.name: LearnedPolicy,
    CostAwarePolicy.name: CostAwarePolicy,
    PPOPolicy.name: PPOPolicy,
}


def build_policy(settings: RouterSettings, name: str | None = None) -> Policy:
    return POLICIES[name or settings.route_policy](settings)
