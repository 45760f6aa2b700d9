"""The PPO policy at run time (a numpy forward pass) and its training (a tiny PPO run)."""

import math

import numpy as np
import pytest

from llmesh.router.v1 import router_pb2
from services.router.learned import FEATURES
from services.router.policies import PPOPolicy
from services.router.ppo import PPORouter, load_ppo, save_next
from services.router.settings import RouterSettings
from services.router.signals import Signals

LO, HI = math.log(0.02), math.log(4.0)


def linear_policy(prefers_large_below: float) -> PPORouter:
    """A one-layer network whose large-minus-small logit is (scaled log λ at the cut) - (scaled log λ)."""
    cut = 2 * (math.log(prefers_large_below) - LO) / (HI - LO) - 1
    n = len(FEATURES)
    w = np.zeros((n + 1, 2))
    w[n, 1] = -1.0  # the large logit falls as λ rises
    return PPORouter("v0", list(FEATURES), [0.0] * n, [1.0] * n, [{"w": w.tolist(), "b": [0.0, cut]}], (LO, HI), {})


def test_the_indifference_price_is_where_the_preference_flips():
    router = linear_policy(0.5)
    x = np.zeros(len(FEATURES))
    assert router.indifference_lambda(x) == pytest.approx(0.5, rel=1e-4)
    assert router.p_large(x, 0.1) > 0.5 > router.p_large(x, 2.0)


def test_prices_outside_the_trained_range_are_clamped():
    x = np.zeros(len(FEATURES))
    assert linear_policy(100.0).indifference_lambda(x) > 4.0
    assert linear_policy(1e-4).indifference_lambda(x) < 0.02


@pytest.mark.parametrize(("lam", "model"), [(0.2, "smollm2-135m-instruct"), (1.0, "smollm2-student")])
async def test_the_policy_pays_for_the_large_model_below_its_indifference_price(lam, model):
    settings = RouterSettings(ppo_lambda=lam)
    policy = PPOPolicy(settings, linear_policy(0.5))
    values = {"perplexity": 5.0, "prompt_tokens": 12.0, **{name: 0.0 for name in FEATURES[2:]}}
    decision = await policy.decide(router_pb2.RouteRequest(), Signals(None, [], settings, values=values))
    assert decision.model == model
    assert decision.reason.endswith("(ppo v0)")


def test_artifacts_are_versioned_and_checked(tmp_path):
    first = save_next(linear_policy(0.5), tmp_path)
    second = save_next(linear_policy(0.7), tmp_path)
    assert (first.name, second.name) == ("v1.json", "v2.json")
    newest = load_ppo(tmp_path)
    assert newest.version == "v2"
    assert newest.indifference_lambda(np.zeros(len(FEATURES))) == pytest.approx(0.7, rel=1e-4)
    stale = tmp_path / "v3.json"
    stale.write_text(second.read_text().replace('"chars"', '"characters"'))
    with pytest.raises(ValueError, match="trained on features"):
        load_ppo(stale)


def test_ppo_learns_to_pay_only_where_the_large_model_helps():
    """Half the queries gain a whole point of quality from the large model, half gain nothing:
    at a moderate price, the trained policy sends the first half to it and keeps the rest."""
    from tools.router import ppo

    rng = np.random.default_rng(0)
    helps = np.arange(200) % 2 == 0
    x = rng.normal(size=(200, len(FEATURES)))
    x[:, 0] = np.where(helps, 2.0, -2.0) + 0.1 * rng.normal(size=200)
    q_small, q_large = np.zeros(200), helps.astype(float)
    router, log = ppo.train(x, q_small, q_large, np.full(200, 0.25), np.ones(200), {}, iterations=20)
    chosen = np.array([router.p_large(row, 0.3) > 0.5 for row in x])
    assert chosen[helps].mean() > 0.9 and chosen[~helps].mean() < 0.1
    assert log.greedy_reward[-1] > log.greedy_reward[0]
