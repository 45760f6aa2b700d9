"""The report's statistics: SRM detection, Welch's t-test, two-proportion z, warnings."""

import random

import pytest

from gateway.experiments.assignment import assign
from gateway.experiments.definitions import Experiment
from gateway.experiments.stats import report, srm_check, two_proportion, welch


def _definition(min_samples: int = 100) -> Experiment:
    return Experiment(
        name="exp",
        target={"kind": "model"},
        min_samples=min_samples,
        variants=[
            {"name": "a", "weight": 5000, "model": "llmesh-small"},
            {"name": "b", "weight": 5000, "model": "smollm2-135m-instruct"},
        ],
    )


def _counters(latencies: list[float], errors: int = 0) -> dict:
    return {
        "requests": len(latencies) + errors,
        "errors": errors,
        "latency_s_n": len(latencies),
        "latency_s_sum": sum(latencies),
        "latency_s_sumsq": sum(v * v for v in latencies),
    }


def _observed_split(lose_b: float) -> dict[str, int]:
    """Assigns 20,000 users to a 50/50 experiment; ``lose_b`` of B's requests go unrecorded
    (a variant that crashes before its figures are written)."""
    definition, generator = _definition(), random.Random(3)
    counts = {"a": 0, "b": 0}
    for index in range(20_000):
        variant = assign(definition, f"user-{index}")
        if variant == "b" and generator.random() < lose_b:
            continue
        counts[variant] += 1
    return counts


def test_induced_sample_ratio_mismatch_is_detected():
    assert srm_check(_observed_split(lose_b=0.05), {"a": 5000, "b": 5000})["mismatch"]


def test_honest_split_is_no_mismatch():
    assert not srm_check(_observed_split(lose_b=0.0), {"a": 5000, "b": 5000})["mismatch"]


def test_welch_finds_a_real_latency_difference_and_not_a_fake_one():
    generator = random.Random(1)
    a = [generator.gauss(1.0, 0.2) for _ in range(500)]
    slower = [generator.gauss(1.1, 0.2) for _ in range(500)]
    same = [generator.gauss(1.0, 0.2) for _ in range(500)]
    assert welch(_counters(a), _counters(slower), "latency_s") < 1e-6
    assert welch(_counters(a), _counters(same), "latency_s") > 0.01


def test_two_proportion_z():
    assert two_proportion(10, 1000, 40, 1000) < 0.001
    assert two_proportion(10, 1000, 11, 1000) > 0.5


def test_report_has_ci_lift_and_warns_below_minimum_sample():
    generator = random.Random(2)
    figures = {
        "a": {"counters": _counters([generator.gauss(1.0, 0.1) for _ in range(50)]), "samples": {}},
        "b": {"counters": _counters([generator.gauss(2.0, 0.1) for _ in range(50)], errors=2), "samples": {}},
    }
    result = report(_definition(min_samples=100), figures)
    a, b = result["variants"]
    latency = b["metrics"]["latency_s"]
    assert latency["ci95"][0] < latency["mean"] < latency["ci95"][1]
    assert latency["lift"] == pytest.approx(latency["mean"] / a["metrics"]["latency_s"]["mean"] - 1)
    assert latency["significant"]
    assert b["metrics"]["errors"]["rate"] == pytest.approx(2 / 52)
    assert not result["verdict_ready"] and any("minimum sample size" in w for w in result["warnings"])
    assert report(_definition(min_samples=10), figures)["verdict_ready"]
