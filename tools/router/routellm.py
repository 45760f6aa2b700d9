"""RouteLLM's router metrics (Ong et al., 2024, "RouteLLM: Learning to Route LLMs with
Preference Data", section 5), over per-query quality scores of a weak and a strong model.

A router is a score per query; at threshold t it sends the queries whose score exceeds t to the
strong model. Sweeping t traces a curve of (share of strong calls, quality):

* PGR(t) = (q(router at t) - q(weak)) / (q(strong) - q(weak)), q the mean quality score;
* APGR = the area under PGR against the strong share over [0, 1] (trapezoids, with the all-weak
  and all-strong endpoints included);
* CPT(x) = the smallest strong share at which PGR >= x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.integrate import trapezoid


@dataclass(frozen=True)
class Curve:
    # Strong-call share, mean quality and PGR at each threshold, in order of rising share.
    share: np.ndarray
    quality: np.ndarray
    pgr: np.ndarray
    # The thresholds that give each point (score > threshold goes to the strong model).
    thresholds: np.ndarray


def sweep(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> Curve:
    """Every distinct routing a threshold on ``scores`` can make, from all-weak to all-strong."""
    scores = np.asarray(scores, dtype=np.float64)
    cuts = np.unique(scores)[::-1]  # descending: each cut adds the next group of tied queries
    thresholds = np.concatenate([[np.inf], cuts[1:], [-np.inf]]) if len(cuts) else np.array([np.inf, -np.inf])
    shares, qualities = [], []
    for t in thresholds:
        to_strong = scores > t
        shares.append(to_strong.mean())
        qualities.append(np.where(to_strong, strong, weak).mean())
    quality = np.asarray(qualities)
    return Curve(np.asarray(shares), quality, pgr(quality, weak.mean(), strong.mean()), thresholds)


def pgr(quality, q_weak: float, q_strong: float):
    return (np.asarray(quality) - q_weak) / (q_strong - q_weak)


def apgr(curve: Curve) -> float:
    return float(trapezoid(curve.pgr, curve.share))


def cpt(curve: Curve, target: float) -> float:
    """Smallest strong share reaching PGR ``target`` (1.0 if only all-strong does)."""
    reached = curve.share[curve.pgr >= target - 1e-12]
    return float(reached.min()) if len(reached) else 1.0


def threshold_for_share(scores: np.ndarray, share: float) -> float:
    """The threshold that sends about ``share`` of these queries to the strong model."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    if share <= 0:
        return float(scores[-1])
    if share >= 1:
        return float(np.nextafter(scores[0], -np.inf))
    return float(np.quantile(scores, 1.0 - share))


def mean_curve(curves: list[Curve], grid: np.ndarray) -> Curve:
    """The average of several curves on a common share grid (for the random router)."""
    quality = np.mean([np.interp(grid, c.share, c.quality) for c in curves], axis=0)
    pgrs = np.mean([np.interp(grid, c.share, c.pgr) for c in curves], axis=0)
    return Curve(grid, quality, pgrs, np.full(len(grid), np.nan))
