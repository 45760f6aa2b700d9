"""Sticky hashing into 10,000 buckets: precision of small splits, stickiness, weight changes."""

import pytest

from gateway.experiments.assignment import assign, bucket, parse_forced
from gateway.experiments.definitions import Experiment, parse_yaml

UNITS = [f"user-{index}" for index in range(100_000)]


def experiment(*weights: int, salt: str = "") -> Experiment:
    return Experiment(
        name="exp",
        salt=salt,
        target={"kind": "model"},
        variants=[
            {"name": f"v{index}", "weight": weight, "model": "llmesh-small"} for index, weight in enumerate(weights)
        ],
    )


def shares(definition: Experiment) -> dict[str, float]:
    counts: dict[str, int] = {}
    for unit in UNITS:
        variant = assign(definition, unit)
        counts[variant] = counts.get(variant, 0) + 1
    return {name: count / len(UNITS) for name, count in counts.items()}


def test_one_percent_variant_gets_one_percent():
    observed = shares(experiment(9900, 100))
    assert abs(observed["v1"] - 0.01) <= 0.001, observed


def test_one_basis_point_variant_is_honoured():
    # 0.01% of 100,000 units is 10 expected; Poisson(10) lies in [2, 25] with overwhelming odds.
    observed = shares(experiment(9999, 1))
    assert 2 <= round(observed.get("v1", 0) * len(UNITS)) <= 25, observed


def test_zero_weight_variant_gets_nobody():
    assert set(shares(experiment(5000, 0, 5000))) == {"v0", "v2"}


def test_same_unit_always_same_variant():
    definition = experiment(5000, 5000)
    first = [assign(definition, unit) for unit in UNITS[:5000]]
    # A fresh, equal definition (another gateway replica, a restart) agrees unit for unit.
    again = [assign(experiment(5000, 5000), unit) for unit in UNITS[:5000]]
    assert first == again


def test_weight_change_moves_only_the_share_that_moved():
    before, after = experiment(5000, 5000), experiment(6000, 4000)
    moved = sum(assign(before, unit) != assign(after, unit) for unit in UNITS) / len(UNITS)
    assert moved <= 0.105, moved
    # Only B -> A moves: A's units stay where they are.
    assert all(assign(after, unit) == "v0" for unit in UNITS[:20_000] if assign(before, unit) == "v0")


def test_salt_makes_experiments_independent_layers():
    one, other = experiment(5000, 5000, salt="one"), experiment(5000, 5000, salt="other")
    in_b_of_one = [unit for unit in UNITS[:20_000] if assign(one, unit) == "v1"]
    share_b_of_other = sum(assign(other, unit) == "v1" for unit in in_b_of_one) / len(in_b_of_one)
    assert abs(share_b_of_other - 0.5) < 0.02


def test_bucket_is_pinned():
    # sha256 of salt and unit: a change of hash would silently reshuffle every running experiment.
    assert (bucket("exp", "user-1"), bucket("salt", "u0")) == (521, 2581)


def test_weights_must_sum_to_10000():
    with pytest.raises(ValueError, match="sum to 10000"):
        experiment(5000, 4000)


def test_yaml_definitions():
    (definition,) = parse_yaml(
        """
experiments:
  - name: router-threshold
    target: {kind: service, service: router}
    unit: session
    variants:
      - {name: a, weight: 9000}
      - {name: b, weight: 1000, deployment: b}
"""
    )
    assert definition.control_variant == "a" and definition.variant("b").deployment == "b"


def test_forced_variant_header():
    assert parse_forced("exp=b, other=a") == {"exp": "b", "other": "a"}
    with pytest.raises(ValueError):
        parse_forced("exp")
