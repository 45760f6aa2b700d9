"""Routing policies: each turns a request and what is known about its prompt into a Decision.

The router runs the policy named by ``LLMESH_ROUTE_POLICY``, looked up in ``POLICIES``; a new
policy is a class with a ``name`` and ``async decide(request, signals)``, added there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from llmesh.router.v1 import router_pb2
from services.inference.triton_client import TritonError

if TYPE_CHECKING:
    from services.router.settings import RouterSettings

PERPLEXITY = "perplexity"


class SignalUnavailable(Exception):
    """A signal a policy needs could not be computed; the router then uses its default model."""


@dataclass(frozen=True)
class Decision:
    model: str
    # Short and human-readable, e.g. "perplexity 41.2 > 30.0".
    reason: str


class Scorer(Protocol):
    async def score(self, prompt_ids: Sequence[int]) -> np.ndarray: ...


def perplexity(logprobs: np.ndarray) -> float:
    return float(np.exp(-np.mean(logprobs, dtype=np.float64)))


class Signals:
    """What policies may know about one prompt.

    Each signal is computed on first use and kept, so a policy that never asks for perplexity
    never pays for scoring; ``values`` holds the ones computed, for the response and the trace.
    """

    def __init__(self, scorer: Scorer, prompt_ids: Sequence[int], settings: RouterSettings) -> None:
        self.values: dict[str, float] = {}
        self._scorer = scorer
        self._prompt_ids = list(prompt_ids)
        self._settings = settings

    async def perplexity(self) -> float:
        if PERPLEXITY not in self.values:
            # Only the end of a long prompt is scored: the scoring model's context is short, and
            # the latest turns say most about how hard the answer will be.
            ids = self._prompt_ids[-self._settings.max_score_tokens :]
            if len(ids) < 2:
                raise SignalUnavailable("prompt too short to score")
            try:
                async with asyncio.timeout(self._settings.score_timeout_s):
                    logprobs = await self._scorer.score(ids)
            except TritonError as error:
                # The reason stays short (it goes into every response); the cause is logged.
                raise SignalUnavailable("scoring model unavailable") from error
            except TimeoutError as error:
                raise SignalUnavailable(f"scoring timed out after {self._settings.score_timeout_s}s") from error
            self.values[PERPLEXITY] = perplexity(logprobs)
        return self.values[PERPLEXITY]


class Policy(Protocol):
    name: str

    async def decide(self, request: router_pb2.RouteRequest, signals: Signals) -> Decision: ...


class PerplexityPolicy:
    """Prompts the small model finds surprising (high perplexity) go to the large model."""

    name = "perplexity"

    def __init__(self, settings: RouterSettings) -> None:
        self.threshold = settings.perplexity_threshold
        self.small_model = settings.small_model
        self.large_model = settings.large_model

    async def decide(self, request: router_pb2.RouteRequest, signals: Signals) -> Decision:
        value = await signals.perplexity()
        if value > self.threshold:
            return Decision(self.large_model, f"perplexity {value:.1f} > {self.threshold:.1f}")
        return Decision(self.small_model, f"perplexity {value:.1f} <= {self.threshold:.1f}")


POLICIES: dict[str, Callable[[RouterSettings], Policy]] = {
    PerplexityPolicy.name: PerplexityPolicy,
}


def build_policy(settings: RouterSettings) -> Policy:
    return POLICIES[settings.route_policy](settings)
