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

import asyncio
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from llmesh.router.v1 import router_pb2

if TYPE_CHECKING:
    from services.router.learned import LearnedRouter
    from services.router.load import LoadMonitor
    from services.router.ppo import PPORouter
    from services.router.settings import RouterSettings

PERPLEXITY = "perplexity"
PROMPT_TOKENS = "prompt_tokens"
# The small model's mean token log-prob on its own answer; known offline only (the cascade
# measures it online on the real answer, in the gateway).
SMALL_ANSWER_LOGPROB = "small_answer_logprob"


class SignalUnavailable(Exception):
    """A signal a policy needs could not be computed; the router then uses its default model."""


@dataclass(frozen=True)
class Decision:
    model: str
    # Short and human-readable, e.g. "perplexity 41.2 > 30.0".
    reason: str
    # Cascade: when the answer of ``model`` has a mean token log-prob below ``escalate_below``,
    # answer again with ``escalate_to`` (empty: no cascade).
    escalate_to: str = ""
    escalate_below: float = 0.0


class Scorer(Protocol):
    async def score(self, prompt_ids: Sequence[int]) -> np.ndarray: ...


class ScoringFailed(Exception):
    """The scorer could not score the prompt (the inference service down, the circuit open...)."""


def perplexity(logprobs: np.ndarray) -> float:
    return float(np.exp(-np.mean(logprobs, dtype=np.float64)))


CODE_MARKS = frozenset("`()[]{}=_'\"")


def lexical_features(prompt_text: str) -> dict[str, float]:
    """Cheap text features of the (chat-templated) prompt, the same online and offline."""
    words = prompt_text.split()
    size = max(len(prompt_text), 1)
    return {
        "chars": float(len(prompt_text)),
        "words": float(len(words)),
        "mean_word_len": float(np.mean([len(w) for w in words])) if words else 0.0,
        "dots": float(prompt_text.count(".")),
        "underscores": float(prompt_text.count("_")),
        "uppercase_share": sum(c.isupper() for c in prompt_text) / size,
        "digit_share": sum(c.isdigit() for c in prompt_text) / size,
        # Chinese text and code are where a small model falls behind a larger one first.
        "cjk_share": sum("\u4e00" <= c <= "\u9fff" for c in prompt_text) / size,
        "code_marks": float(sum(c in CODE_MARKS for c in prompt_text)),
    }


class Signals:
    """What policies may know about one prompt.

    Each signal is computed on first use and kept, so a policy that never asks for perplexity
    never pays for scoring; ``values`` holds the ones computed, for the response and the trace.
    Offline, ``values`` is filled in advance and no scorer is called.
    """

    def __init__(
        self,
        scorer: Scorer | None,
        prompt_ids: Sequence[int],
        settings: RouterSettings,
        prompt_text: str = "",
        values: dict[str, float] | None = None,
    ) -> None:
        self.values: dict[str, float] = dict(values or {})
        self._scorer = scorer
        self._prompt_ids = list(prompt_ids)
        self._prompt_text = prompt_text
        self._settings = settings

    async def perplexity(self) -> float:
        if PERPLEXITY not in self.values:
            # Only the end of a long prompt is scored: the scoring model's context is short, and
            # the latest turns say most about how hard the answer will be.
            ids = self._prompt_ids[-self._settings.max_score_tokens :]
            if len(ids) < 2 or self._scorer is None:
                raise SignalUnavailable("prompt too short to score")
            try:
                async with asyncio.timeout(self._settings.score_timeout_s):
                    logprobs = await self._scorer.score(ids)
            except ScoringFailed as error:
                # The reason stays short (it goes into every response); the cause is logged.
                raise SignalUnavailable("scoring model unavailable") from error
            except TimeoutError as error:
                raise SignalUnavailable(f"scoring timed out after {self._settings.score_timeout_s}s") from error
            self.values[PERPLEXITY] = perplexity(logprobs)
        return self.values[PERPLEXITY]

    def prompt_tokens(self) -> float:
        return self.values.setdefault(PROMPT_TOKENS, float(len(self._prompt_ids)))

    def lexical(self) -> dict[str, float]:
        # Not put into ``values``: they are cheap to recompute and would crowd the trace.
        if "chars" in self.values:
            return {k: self.values[k] for k in lexical_features("")}
        return lexical_features(self._prompt_text)


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
        self, settings: RouterSettings, model: LearnedRouter | None = None, load: LoadMonitor | None = None
    ) -> None:
        from services.router.learned import load_router
        from services.router.load import LoadMonitor

        super().__init__(settings, settings.cost_min_gain_per_currency)
        self.model = model or load_router(settings.learned_router_path)
        self.load = load if load is not None else LoadMonitor(settings)
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
