"""An experiment's results from its running figures: means with 95% confidence intervals,
lift over the control, p-values (Welch's t-test for continuous metrics, two-proportion z-test
for rates), and a sample-ratio-mismatch check (chi-square of observed against configured split).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from gateway.experiments.definitions import BUCKETS, Experiment, Shadow
from gateway.experiments.store import CONTINUOUS, RATES, SAMPLED, shadow_key

ALPHA = 0.05
# SRM is a bug detector, not a verdict: a strict threshold keeps false alarms rare.
SRM_ALPHA = 0.001


def srm_check(observed: Mapping[str, int], weights: Mapping[str, int]) -> dict:
    """Chi-square of the requests each variant got against the split it was configured for."""
    names = [name for name, weight in weights.items() if weight > 0]
    counts = np.array([observed.get(name, 0) for name in names], dtype=float)
    total = counts.sum()
    result = {"observed": {name: int(observed.get(name, 0)) for name in names}, "chi2": None, "p_value": None}
    result["expected"] = {name: total * weights[name] / BUCKETS for name in names}
    if total == 0 or len(names) < 2:
        return {**result, "mismatch": False}
    expected = np.array([weights[name] for name in names], dtype=float) / BUCKETS * total
    chi2, p_value = stats.chisquare(counts, expected)
    return {**result, "chi2": float(chi2), "p_value": float(p_value), "mismatch": bool(p_value < SRM_ALPHA)}


def _moments(counters: Mapping[str, float], metric: str) -> tuple[int, float, float]:
    """Count, mean and sample standard deviation from the stored sums."""
    n = int(counters.get(f"{metric}_n", 0))
    if n == 0:
        return 0, math.nan, math.nan
    total, squares = counters.get(f"{metric}_sum", 0.0), counters.get(f"{metric}_sumsq", 0.0)
    mean = total / n
    variance = max(squares - n * mean * mean, 0.0) / (n - 1) if n > 1 else math.nan
    return n, mean, math.sqrt(variance)


def continuous_summary(counters: Mapping[str, float], metric: str, samples: Sequence[float] = ()) -> dict:
    n, mean, sd = _moments(counters, metric)
    summary: dict = {"n": n, "mean": _clean(mean), "sd": _clean(sd), "ci95": None}
    if n > 1 and math.isfinite(sd):
        half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        summary["ci95"] = [mean - half, mean + half]
    if samples:
        p50, p95 = np.percentile(samples, [50, 95])
        summary.update(p50=float(p50), p95=float(p95))
    return summary


def welch(control: Mapping[str, float], variant: Mapping[str, float], metric: str) -> float | None:
    n1, m1, s1 = _moments(control, metric)
    n2, m2, s2 = _moments(variant, metric)
    if n1 < 2 or n2 < 2 or not (s1 > 0 or s2 > 0):
        return None
    return _clean(stats.ttest_ind_from_stats(m1, s1, n1, m2, s2, n2, equal_var=False).pvalue)


def rate_summary(count: int, n: int) -> dict:
    if n == 0:
        return {"count": count, "n": 0, "rate": None, "ci95": None}
    rate = count / n
    # Wilson's interval stays inside [0, 1] and behaves at rates near 0, where errors live.
    z = stats.norm.ppf(0.975)
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # Clamped: rounding can put a bound a hair outside [0, 1] at a rate of exactly 0 or 1.
    return {"count": count, "n": n, "rate": rate, "ci95": [max(centre - half, 0.0), min(centre + half, 1.0)]}


def two_proportion(count1: int, n1: int, count2: int, n2: int) -> float | None:
    if n1 == 0 or n2 == 0:
        return None
    pooled = (count1 + count2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return None
    z = (count2 / n2 - count1 / n1) / se
    return float(2 * stats.norm.sf(abs(z)))


def _lift(control: float | None, value: float | None) -> float | None:
    if control is None or value is None or not control or math.isnan(control) or math.isnan(value):
        return None
    return value / control - 1


def _clean(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def report(experiment: Experiment, figures: Mapping[str, Mapping]) -> dict:
    """The whole report as plain JSON-able data (the CLI, the admin API and the chart read it)."""
    control_name = experiment.control_variant
    control = figures.get(control_name, {}).get("counters", {})
    counters_of = {variant.name: figures.get(variant.name, {}).get("counters", {}) for variant in experiment.variants}
    requests = {name: int(counters.get("requests", 0)) for name, counters in counters_of.items()}
    total = sum(requests.values())
    warnings = []
    variants = []
    for variant in experiment.variants:
        counters = figures.get(variant.name, {}).get("counters", {})
        samples = figures.get(variant.name, {}).get("samples", {})
        n = requests[variant.name]
        if variant.weight and n < experiment.min_samples:
            warnings.append(
                f"variant {variant.name!r} has {n} requests, fewer than the minimum sample size "
                f"{experiment.min_samples}: no verdict yet"
            )
        metrics = {}
        for metric in CONTINUOUS:
            summary = continuous_summary(counters, metric, samples.get(metric, ()) if metric in SAMPLED else ())
            if variant.name != control_name:
                summary["lift"] = _lift(continuous_summary(control, metric)["mean"], summary["mean"])
                summary["p_value"] = welch(control, counters, metric)
                summary["significant"] = summary["p_value"] is not None and summary["p_value"] < ALPHA
            metrics[metric] = summary
        for metric in RATES:
            summary = rate_summary(int(counters.get(metric, 0)), n)
            if variant.name != control_name:
                control_rate = rate_summary(int(control.get(metric, 0)), requests[control_name])
                summary["lift"] = _lift(control_rate["rate"], summary["rate"])
                summary["p_value"] = two_proportion(
                    int(control.get(metric, 0)), requests[control_name], int(counters.get(metric, 0)), n
                )
                summary["significant"] = summary["p_value"] is not None and summary["p_value"] < ALPHA
            metrics[metric] = summary
        variants.append(
            {
                "name": variant.name,
                "control": variant.name == control_name,
                "weight_bp": variant.weight,
                "deployment": variant.deployment,
                "model": variant.model,
                "requests": n,
                "share": n / total if total else None,
                "input_tokens": int(counters.get("input_tokens", 0)),
                "output_tokens": int(counters.get("output_tokens", 0)),
                "cost_total": float(counters.get("cost_sum", 0.0)),
                "models": {
                    key[len("model:") :]: int(value) for key, value in counters.items() if key.startswith("model:")
                },
                "metrics": metrics,
            }
        )
    srm = srm_check(requests, {variant.name: variant.weight for variant in experiment.variants})
    if srm["mismatch"]:
        warnings.insert(
            0,
            f"sample ratio mismatch (chi-square p = {srm['p_value']:.2g}): the split differs from the configured "
            "weights, so the assignment or the recording is broken and the figures cannot be trusted",
        )
    result = {
        "experiment": experiment.name,
        "description": experiment.description,
        "state": experiment.state,
        "target": experiment.target.model_dump(),
        "unit": experiment.unit,
        "control": control_name,
        "min_samples": experiment.min_samples,
        "total_requests": total,
        "srm": srm,
        "warnings": warnings,
        "verdict_ready": not warnings,
        "variants": variants,
        "shadow": None,
    }
    if experiment.shadow is not None:
        result["shadow"] = _shadow_report(experiment.shadow, figures.get(shadow_key(experiment.shadow.name), {}))
    return result


def _shadow_report(shadow: Shadow, figures: Mapping) -> dict:
    counters = figures.get("counters", {})
    n = int(counters.get("requests", 0))
    compared = n - int(counters.get("errors", 0))
    return {
        "name": shadow.name,
        "deployment": shadow.deployment,
        "model": shadow.model,
        "share_bp": shadow.share,
        "mirrored": n,
        "errors": rate_summary(int(counters.get("errors", 0)), n),
        "same_text": rate_summary(int(counters.get("same_text", 0)), compared),
        "same_model": rate_summary(int(counters.get("same_model", 0)), compared),
        "latency_s": continuous_summary(counters, "latency_s", figures.get("samples", {}).get("latency_s", ())),
        "primary_latency_s": continuous_summary(counters, "primary_latency_s"),
        # Paired: the same prompts on both sides, so the mean difference has a tight interval.
        "latency_diff_s": continuous_summary(counters, "latency_diff_s"),
        "output_tokens": continuous_summary(counters, "output_tokens"),
        "primary_output_tokens": continuous_summary(counters, "primary_output_tokens"),
    }


async def experiment_report(store, name: str) -> dict | None:
    """The report of a stored experiment; None when there is no such experiment."""
    experiment = await store.get(name)
    if experiment is None:
        return None
    return report(experiment, await store.figures(experiment))
