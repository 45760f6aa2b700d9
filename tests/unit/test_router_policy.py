"""The router's signals and its perplexity policy, with a fake scorer."""

import asyncio
import math

import numpy as np
import pytest
from pydantic import ValidationError

from llmesh.router.v1 import router_pb2
from services.inference.triton_client import TritonError
from services.router.policies import (
    Decision,
    PerplexityPolicy,
    Signals,
    SignalUnavailable,
    build_policy,
    perplexity,
)
from services.router.settings import RouterSettings

SETTINGS = RouterSettings(perplexity_threshold=30.0, max_score_tokens=4, score_timeout_s=0.05)


class FakeScorer:
    """Scores every token with the same log-prob, or fails with ``error``."""

    def __init__(self, logprob=-1.0, error=None, delay_s=0.0):
        self.logprob, self.error, self.delay_s = logprob, error, delay_s
        self.calls = []

    async def score(self, prompt_ids):
        self.calls.append(list(prompt_ids))
        await asyncio.sleep(self.delay_s)
        if self.error:
            raise self.error
        return np.full(len(prompt_ids) - 1, self.logprob, dtype=np.float32)


def test_perplexity_is_exp_of_mean_negative_logprob():
    assert perplexity(np.array([-math.log(2.0)] * 5)) == pytest.approx(2.0)
    assert perplexity(np.array([-1.0, -3.0], dtype=np.float32)) == pytest.approx(math.e**2)


async def test_signals_score_only_the_last_tokens_and_only_once():
    scorer = FakeScorer(logprob=-2.0)
    signals = Signals(scorer, range(10), SETTINGS)
    assert await signals.perplexity() == pytest.approx(math.e**2)
    assert await signals.perplexity() == pytest.approx(math.e**2)
    assert scorer.calls == [[6, 7, 8, 9]]
    assert signals.values == {"perplexity": pytest.approx(math.e**2)}


@pytest.mark.parametrize(
    ("scorer", "prompt", "why"),
    [
        (FakeScorer(), [1], "too short"),
        (FakeScorer(error=TritonError("model not ready")), [1, 2, 3], "scoring model unavailable"),
        (FakeScorer(delay_s=1.0), [1, 2, 3], "timed out"),
    ],
    ids=["one-token", "scoring-error", "scoring-slow"],
)
async def test_signals_unavailable(scorer, prompt, why):
    signals = Signals(scorer, prompt, SETTINGS)
    with pytest.raises(SignalUnavailable, match=why):
        await signals.perplexity()
    assert signals.values == {}


@pytest.mark.parametrize(
    ("logprob", "decision"),
    [
        (-1.0, Decision("llmesh-small", "perplexity 2.7 <= 30.0")),
        (-math.log(29.9), Decision("llmesh-small", "perplexity 29.9 <= 30.0")),
        (-math.log(41.2), Decision("llmesh-large", "perplexity 41.2 > 30.0")),
    ],
    ids=["easy", "just-under", "hard"],
)
async def test_perplexity_policy(logprob, decision):
    policy = PerplexityPolicy(SETTINGS)
    signals = Signals(FakeScorer(logprob=logprob), [1, 2, 3], SETTINGS)
    assert await policy.decide(router_pb2.RouteRequest(), signals) == decision


def test_policy_is_chosen_by_settings():
    policy = build_policy(SETTINGS)
    assert isinstance(policy, PerplexityPolicy) and policy.name == "perplexity"


@pytest.mark.parametrize(
    "override",
    [{"route_policy": "coin-flip"}, {"large_model": "gpt-9"}, {"degraded_model": ""}, {"max_score_tokens": 1}],
)
def test_bad_router_settings_fail_at_start(override):
    with pytest.raises(ValidationError):
        RouterSettings(**override)
