"""RouteLLM's metrics on hand-computed examples, and the random router's sanity check."""

import numpy as np
import pytest

from tools.router import routellm

# Four queries; the strong model is better on queries 0 and 1 only.
WEAK = np.array([0.0, 0.0, 1.0, 1.0])
STRONG = np.array([2.0, 2.0, 1.0, 1.0])  # q(weak) = 0.5, q(strong) = 1.5


def test_a_perfect_router_sweep():
    curve = routellm.sweep(np.array([4.0, 3.0, 2.0, 1.0]), WEAK, STRONG)
    assert curve.share.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve.quality.tolist() == [0.5, 1.0, 1.5, 1.5, 1.5]
    assert curve.pgr.tolist() == [0.0, 0.5, 1.0, 1.0, 1.0]
    # Trapezoids: 0.25 * (0.25 + 0.75 + 1 + 1) = 0.75.
    assert routellm.apgr(curve) == pytest.approx(0.75)
    assert routellm.cpt(curve, 0.5) == 0.25
    assert routellm.cpt(curve, 0.8) == 0.5


def test_the_worst_router_sweep():
    curve = routellm.sweep(np.array([1.0, 2.0, 3.0, 4.0]), WEAK, STRONG)
    assert curve.pgr.tolist() == [0.0, 0.0, 0.0, 0.5, 1.0]
    # Trapezoids: 0.25 * (0 + 0 + 0.25 + 0.75).
    assert routellm.apgr(curve) == pytest.approx(0.25)
    assert routellm.cpt(curve, 0.5) == 0.75
    assert routellm.cpt(curve, 0.8) == 1.0


def test_tied_scores_move_together():
    curve = routellm.sweep(np.array([1.0, 1.0, 0.0, 0.0]), WEAK, STRONG)
    assert curve.share.tolist() == [0.0, 0.5, 1.0]
    assert curve.pgr.tolist() == [0.0, 1.0, 1.0]
    assert routellm.apgr(curve) == pytest.approx(0.25 + 0.5)


def test_pgr_definition():
    assert routellm.pgr(1.0, 0.5, 1.5) == pytest.approx(0.5)
    assert routellm.pgr(1.5, 0.5, 1.5) == pytest.approx(1.0)


def test_random_router_apgr_is_about_one_half():
    rng = np.random.default_rng(0)
    weak, strong = rng.normal(0, 1, 400), rng.normal(0.5, 1, 400)
    grid = np.linspace(0, 1, 101)
    curves = [routellm.sweep(rng.random(400), weak, strong) for _ in range(30)]
    assert routellm.apgr(routellm.mean_curve(curves, grid)) == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_threshold_for_share_sends_that_share(share):
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    assert (scores > routellm.threshold_for_share(scores, share)).mean() == share
