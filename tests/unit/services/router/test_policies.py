"""The router's signals, every policy's decision logic and the budgets, with fakes."""

import asyncio
import datetime as dt
import math
import random

import numpy as np
import pytest
from pydantic import ValidationError

from llmesh.router.v1 import router_pb2
from services.router.budget import Budgets, seconds_to_reset
from services.router.learned import FEATURES, LearnedRouter, feature_vector
from services.router.load import NoLoad
from services.router.policies import (
    CascadePolicy,
    CostAwarePolicy,
    Decision,
    FixedPolicy,
    LearnedPolicy,
    PerplexityPolicy,
    RandomPolicy,
    build_policy,
)
from services.router.settings import RouterSettings
from services.router.signals import ScoringFailed, Signals, SignalUnavailable, perplexity
from support.fake_redis import FakeRedis

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
        (FakeScorer(error=ScoringFailed("UNAVAILABLE: circuit open")), [1, 2, 3], "scoring model unavailable"),
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
        (-1.0, Decision("smollm2-student", "perplexity 2.7 <= 30.0")),
        (-math.log(29.9), Decision("smollm2-student", "perplexity 29.9 <= 30.0")),
        (-math.log(41.2), Decision("smollm2-135m-instruct", "perplexity 41.2 > 30.0")),
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
    [
        {"route_policy": "coin-flip"},
        {"large_model": "gpt-9"},
        {"degraded_model": ""},
        {"max_score_tokens": 1},
        {"tenant_policies": {"acme": "coin-flip"}},
        {"experiment_policies": {"exp:b": "coin-flip"}},
        {"budget_exhausted_action": "shrug"},
        {"fixed_model": "gpt-9"},
    ],
)
def test_bad_router_settings_fail_at_start(override):
    with pytest.raises(ValidationError):
        RouterSettings(**override)


# --- the other policies -------------------------------------------------------------------


def learned_router(weight_on_log_ppl: float, gain_per_log_ppl: float, gain_bias: float = 0.0) -> LearnedRouter:
    """A hand-made artifact that looks at log-perplexity only (features are not rescaled)."""
    n = len(FEATURES)
    return LearnedRouter(
        "v-test",
        list(FEATURES),
        [0.0] * n,
        [1.0] * n,
        [weight_on_log_ppl] + [0.0] * (n - 1),
        -weight_on_log_ppl * math.log(10.0),
        [gain_per_log_ppl] + [0.0] * (n - 1),
        gain_bias,
        {},
    )


def signals_for(ppl: float, tokens: int = 3, text: str = "x") -> Signals:
    return Signals(FakeScorer(logprob=-math.log(ppl)), list(range(tokens)), SETTINGS, text)


async def test_random_policy_sends_its_share_to_the_large_model():
    policy = RandomPolicy(SETTINGS.model_copy(update={"random_large_share": 0.3}), random.Random(7))
    models = [(await policy.decide(router_pb2.RouteRequest(), signals_for(5))).model for _ in range(2000)]
    assert models.count("smollm2-135m-instruct") / len(models) == pytest.approx(0.3, abs=0.03)


async def test_fixed_policy():
    policy = FixedPolicy(SETTINGS.model_copy(update={"fixed_model": "smollm2-135m-instruct"}))
    assert await policy.decide(router_pb2.RouteRequest(), signals_for(5)) == Decision(
        "smollm2-135m-instruct", "fixed smollm2-135m-instruct"
    )


async def test_cascade_starts_small_and_names_the_escalation():
    policy = CascadePolicy(SETTINGS.model_copy(update={"cascade_min_logprob": -2.0}))
    decision = await policy.decide(router_pb2.RouteRequest(), signals_for(50))
    assert (decision.model, decision.escalate_to, decision.escalate_below) == (
        "smollm2-student",
        "smollm2-135m-instruct",
        -2.0,
    )


@pytest.mark.parametrize(("ppl", "model"), [(50.0, "smollm2-135m-instruct"), (5.0, "smollm2-student")])
async def test_cascade_routes_streams_up_front_and_never_escalates_them(ppl, model):
    policy = CascadePolicy(SETTINGS)
    decision = await policy.decide(router_pb2.RouteRequest(stream=True), signals_for(ppl))
    assert decision.model == model and decision.escalate_to == ""
    assert decision.reason.startswith("cascade (streaming, no escalation): perplexity")


async def test_cascade_offline_score_is_the_small_answers_confidence():
    policy = CascadePolicy(SETTINGS.model_copy(update={"cascade_min_logprob": -2.0}))
    confident = Signals(None, [], SETTINGS, values={"small_answer_logprob": -1.0})
    unsure = Signals(None, [], SETTINGS, values={"small_answer_logprob": -3.0})
    assert await policy.score(router_pb2.RouteRequest(), confident) < policy.threshold
    assert await policy.score(router_pb2.RouteRequest(), unsure) > policy.threshold
    with pytest.raises(SignalUnavailable):
        await policy.score(router_pb2.RouteRequest(), signals_for(5))


@pytest.mark.parametrize(("ppl", "model"), [(40.0, "smollm2-135m-instruct"), (2.5, "smollm2-student")])
async def test_learned_policy(ppl, model):
    settings = SETTINGS.model_copy(update={"learned_threshold": 0.5})
    policy = LearnedPolicy(settings, learned_router(weight_on_log_ppl=3.0, gain_per_log_ppl=0.1))
    decision = await policy.decide(router_pb2.RouteRequest(), signals_for(ppl))
    assert decision.model == model
    assert decision.reason.startswith("p(large better)") and decision.reason.endswith("(v-test)")


class FixedLoad:
    def __init__(self, factors):
        self._factors = factors

    async def factors(self):
        return self._factors


def cost_aware(load, min_gain_per_currency=1e4, gain_bias=0.5):
    settings = SETTINGS.model_copy(
        update={"cost_min_gain_per_currency": min_gain_per_currency, "expected_output_tokens": 10}
    )
    return CostAwarePolicy(settings, learned_router(0.0, 0.0, gain_bias=gain_bias), load)


async def test_cost_aware_weighs_predicted_gain_against_extra_cost():
    # 3 prompt + 10 output tokens: small 0.0000023, large 0.000023; extra 0.0000207.
    # A gain of 0.5 per extra 0.0000207 is ~24000 per currency unit.
    request = router_pb2.RouteRequest()
    assert (await cost_aware(NoLoad(), 1e4).decide(request, signals_for(5))).model == "smollm2-135m-instruct"
    assert (await cost_aware(NoLoad(), 1e5).decide(request, signals_for(5))).model == "smollm2-student"
    assert (await cost_aware(NoLoad(), 1e4, gain_bias=-0.1).decide(request, signals_for(5))).model == "smollm2-student"


async def test_a_saturated_model_gets_dearer():
    request = router_pb2.RouteRequest()
    assert (
        await cost_aware(FixedLoad({"smollm2-135m-instruct": 1.0})).decide(request, signals_for(5))
    ).model == "smollm2-135m-instruct"
    saturated = cost_aware(FixedLoad({"smollm2-135m-instruct": 4.0}))
    decision = await saturated.decide(request, signals_for(5))
    assert decision.model == "smollm2-student" and decision.reason.startswith("gain per extra cost")
    # And a saturated small model makes the large one the cheaper choice.
    assert (
        await cost_aware(FixedLoad({"smollm2-student": 20.0}), 1e6).decide(request, signals_for(5))
    ).model == "smollm2-135m-instruct"


def test_feature_vector_order():
    values = {"perplexity": math.e, "prompt_tokens": math.e**2, **{name: 1.0 for name in FEATURES[2:]}}
    assert feature_vector(values)[:2].tolist() == pytest.approx([1.0, 2.0])


@pytest.mark.parametrize("name", ["random", "fixed", "cascade", "perplexity"])
def test_every_policy_is_buildable_by_name(name):
    assert build_policy(SETTINGS, name).name == name


# --- budgets ------------------------------------------------------------------------------


NOON = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


async def test_budget_is_charged_per_tenant_and_day_and_runs_out():
    budgets = Budgets({"acme": 1.0}, FakeRedis())
    assert await budgets.state("nobody", NOON) is None
    await budgets.charge("acme", 0.6, NOON)
    state = await budgets.state("acme", NOON)
    assert (state.spent, state.exhausted, state.retry_after_s) == (pytest.approx(0.6), False, 12 * 3600)
    await budgets.charge("acme", 0.5, NOON)
    assert (await budgets.state("acme", NOON)).exhausted
    # The next UTC day starts from zero.
    assert not (await budgets.state("acme", NOON + dt.timedelta(days=1))).exhausted
    assert set(budgets.client.ttl.values()) == {2 * 86400}


async def test_unbudgeted_tenants_are_not_charged():
    budgets = Budgets({"acme": 1.0}, FakeRedis())
    await budgets.charge("other", 5.0, NOON)
    assert budgets.client.data == {}


def test_seconds_to_reset():
    assert seconds_to_reset(NOON) == 12 * 3600
    assert seconds_to_reset(dt.datetime(2026, 11, 24, 23, 59, 59, 900000, tzinfo=dt.UTC)) == 1
