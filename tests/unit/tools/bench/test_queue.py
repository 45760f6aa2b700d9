"""tools.bench.queue: its stack's settings are valid for every process, and its summary."""

import math

import pytest

from gateway.settings import GatewaySettings
from mesh.settings import load_settings
from services.inference.settings import InferenceSettings
from services.router.settings import RouterSettings
from tools.bench.queue import MODEL, Outcome, stack_env, summarise


@pytest.mark.parametrize("cls", [InferenceSettings, RouterSettings, GatewaySettings])
def test_the_stack_serves_one_model_admitted_one_at_a_time(monkeypatch, cls):
    for name, value in stack_env().items():
        monkeypatch.setenv(name, value)
    settings = load_settings(cls)
    assert [model.name for model in settings.models] == [MODEL]
    assert settings.max_concurrent_requests > 1
    if cls is InferenceSettings:
        assert settings.model_limit(MODEL) == (1, 0)


def test_summary_counts_refusals_and_their_latency():
    outcomes = [Outcome("overloaded", 0.004), Outcome("overloaded", 0.2), Outcome("ok", 0.5), Outcome("grpc-X", 1.0)]
    edge = summarise("rest", outcomes)
    assert (edge.requests, edge.accepted, edge.refused, edge.other) == (4, 1, 2, 1)
    assert (edge.p50_ms, edge.p99_ms, edge.within_50ms) == (4.0, 200.0, 0.5)
    assert math.isnan(summarise("rest", [Outcome("ok", 0.1)]).within_50ms)
