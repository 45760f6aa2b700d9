"""Deterministic, sticky assignment of units to variants.

A unit's bucket is a hash of the experiment's salt and the unit id, in [0, 10,000). Variants own
contiguous bucket ranges in declaration order, sized by their weight in basis points, so the
same unit always lands in the same variant, and a weight change from 50/50 to 60/40 moves only
the 10% of buckets between the two boundaries. Each experiment hashes with its own salt, so
concurrent experiments are independent layers: being in B of one says nothing about another.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from itertools import accumulate

from gateway.experiments.definitions import BUCKETS, Experiment

FORCE_HEADER = "x-llmesh-force-variant"


def bucket(salt: str, unit_id: str) -> int:
    # sha256 rather than Python's hash(): stable across processes, replicas and releases.
    digest = hashlib.sha256(f"{salt}\x00{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def variant_for_bucket(experiment: Experiment, value: int) -> str:
    # Upper bounds of each variant's range; a zero-weight variant owns an empty range.
    bounds = list(accumulate(variant.weight for variant in experiment.variants))
    return experiment.variants[bisect_right(bounds, value)].name


def assign(experiment: Experiment, unit_id: str) -> str:
    return variant_for_bucket(experiment, bucket(experiment.hash_salt, unit_id))


def in_share(salt: str, unit_id: str, share_bp: int) -> bool:
    """Whether a unit falls in the first ``share_bp`` basis points (shadow sampling)."""
    return bucket(salt, unit_id) < share_bp


def parse_forced(header: str) -> dict[str, str]:
    """``name=variant[, name=variant ...]`` (the force header) as a dict; bad pairs raise."""
    forced: dict[str, str] = {}
    for pair in filter(None, (part.strip() for part in header.split(","))):
        name, sep, variant = pair.partition("=")
        if not sep or not name.strip() or not variant.strip():
            raise ValueError(f"expected name=variant, got {pair!r}")
        forced[name.strip()] = variant.strip()
    return forced
