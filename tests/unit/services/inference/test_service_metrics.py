"""The live metrics the Grafana dashboard and the autoscalers read (docker-compose.yml, k8s/)."""

from prometheus_client import REGISTRY

from gateway.audit import Outcome
from gateway.metrics import observe_finished
from mesh import semconv
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_breaker_state_gauge_follows_each_breaker():
    settings = InferenceSettings(breaker_failure_threshold=1, breaker_cooldown_s=10)
    now = [0.0]
    service = InferenceService(settings, triton=object(), clock=lambda: now[0])
    model = settings.models[0].name
    gauge = semconv.METRIC_INFERENCE_BREAKER_STATE
    assert _value(gauge, model=model) == 0
    service.breakers[model].record_failure()
    assert _value(gauge, model=model) == 2
    now[0] = 11.0
    assert service.breakers[model].allow()
    assert _value(gauge, model=model) == 1


def test_finished_requests_count_tokens_and_variants():
    tokens = semconv.METRIC_TOKENS
    requests = semconv.METRIC_EXPERIMENT_REQUESTS
    before_output = _value(tokens, model="llmesh-small", kind="output")
    before_ok = _value(requests, experiment="exp-metrics", variant="b", status="ok")
    before_blocked = _value(requests, experiment="exp-metrics", variant="b", status="blocked")
    variant = {"exp-metrics": "b"}
    observe_finished(
        Outcome("r1", "t", "auto", model="llmesh-small", completion_tokens=7, latency_ms=250.0, experiments=variant)
    )
    observe_finished(
        Outcome("r2", "t", "auto", model="llmesh-small", finish_reason="content_filter", experiments=variant)
    )
    assert _value(tokens, model="llmesh-small", kind="output") == before_output + 7
    assert _value(requests, experiment="exp-metrics", variant="b", status="ok") == before_ok + 1
    assert _value(requests, experiment="exp-metrics", variant="b", status="blocked") == before_blocked + 1
    count = _value(f"{semconv.METRIC_EXPERIMENT_DURATION}_count", experiment="exp-metrics", variant="b")
    assert count >= 1
