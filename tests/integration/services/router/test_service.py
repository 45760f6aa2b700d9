"""RouterService over gRPC, in-process on port 0, with a fake scoring model."""

import asyncio
import math

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from prometheus_client import REGISTRY

from gateway.errors import BudgetExhausted, from_rpc_error
from llmesh.common.v1 import common_pb2
from llmesh.router.v1 import router_pb2, router_pb2_grpc
from mesh import semconv
from mesh.channel import build_channel
from mesh.errors import error_info
from mesh.server import start_service
from services.router.budget import Budgets
from services.router.service import RouterService
from services.router.settings import RouterSettings
from services.router.signals import ScoringFailed
from support.fake_redis import FakeRedis

SMALL, LARGE = "smollm2-student", "smollm2-135m-instruct"
# The third catalog model (its own vocabulary): last in every fallback chain.
OTHER = "llmesh-small"
SETTINGS = RouterSettings(default_deadline_s=5.0, perplexity_threshold=30.0, degraded_model=SMALL)


class FakeScorer:
    """The scoring model: every token gets log-prob ``logprob``, or every call fails with ``error``."""

    def __init__(self):
        self.logprob = -1.0
        self.error = None
        self.serving = True
        self.calls = []

    async def score(self, prompt_ids):
        self.calls.append(list(prompt_ids))
        if self.error:
            raise self.error
        return np.full(len(prompt_ids) - 1, self.logprob, dtype=np.float32)

    async def ready(self):
        return self.serving


@pytest.fixture
def scorer():
    return FakeScorer()


@pytest.fixture
async def channel(scorer):
    running = await start_service(RouterService(SETTINGS, scorer), SETTINGS, "127.0.0.1:0")
    channel = build_channel(f"127.0.0.1:{running.port}", SETTINGS)
    yield channel
    await channel.close()
    await running.stop(None)


@pytest.fixture
def stub(channel):
    return router_pb2_grpc.RouterServiceStub(channel)


def prompts():
    """Each model's tokens differ; the router scores the scoring model's."""
    return [
        common_pb2.ModelPrompt(model=SMALL, text="...", token_ids=[5, 6, 7, 8]),
        common_pb2.ModelPrompt(model=LARGE, text="...", token_ids=[50, 60]),
    ]


def route_request(requested_model=""):
    return router_pb2.RouteRequest(prompts=prompts(), requested_model=requested_model)


def decisions(model: str) -> float:
    labels = {"policy": "perplexity", "model": model, "outcome": "policy"}
    return REGISTRY.get_sample_value(semconv.METRIC_ROUTE_DECISIONS, labels) or 0.0


async def test_low_perplexity_goes_to_the_small_model(stub, scorer, spans):
    spans.clear()
    before = decisions(SMALL)
    response = await stub.Route(route_request())
    assert (response.model, list(response.fallback_models)) == (SMALL, [LARGE, OTHER])
    assert (response.policy, response.reason) == ("perplexity", "perplexity 2.7 <= 30.0")
    assert dict(response.signals) == {"perplexity": pytest.approx(math.e)}
    assert scorer.calls == [[5, 6, 7, 8]]
    assert decisions(SMALL) == before + 1
    (span,) = [s for s in spans.get_finished_spans() if s.kind is trace.SpanKind.SERVER]
    assert span.attributes[semconv.LLMESH_ROUTE_POLICY] == "perplexity"
    assert span.attributes[semconv.LLMESH_ROUTE_REASON] == response.reason
    assert span.attributes[semconv.LLMESH_ROUTE_FALLBACKS] == (LARGE, OTHER)
    assert span.attributes[semconv.LLMESH_ROUTE_SIGNAL_PREFIX + "perplexity"] == pytest.approx(math.e)


async def test_high_perplexity_goes_to_the_large_model(stub, scorer):
    scorer.logprob = -math.log(41.2)
    response = await stub.Route(route_request("auto"))
    assert (response.model, list(response.fallback_models)) == (LARGE, [SMALL, OTHER])
    assert response.reason == "perplexity 41.2 > 30.0"


async def test_a_named_model_is_honoured_without_scoring(stub, scorer):
    response = await stub.Route(route_request(LARGE))
    assert (response.model, response.reason, response.policy) == (LARGE, "requested", "requested")
    assert list(response.fallback_models) == [SMALL, OTHER]
    assert dict(response.signals) == {}
    assert scorer.calls == []


async def test_unknown_named_model_is_not_found(stub):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Route(route_request("gpt-9"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(raised.value).reason == "MODEL_NOT_FOUND"


async def test_scoring_down_degrades_to_the_default_model(stub, scorer):
    scorer.error = ScoringFailed("UNAVAILABLE: llmesh-small: circuit open")
    response = await stub.Route(route_request())
    assert response.model == SETTINGS.degraded_model
    assert response.reason.startswith("scoring model unavailable")
    assert dict(response.signals) == {}


async def test_health_follows_the_inference_service(channel, scorer):
    health = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=RouterService.service_names[0])
    await asyncio.sleep(0.05)  # the first readiness check runs as the server starts
    assert (await health.Check(request)).status == health_pb2.HealthCheckResponse.SERVING
    scorer.serving = False
    for _ in range(100):
        if (await health.Check(request)).status == health_pb2.HealthCheckResponse.NOT_SERVING:
            break
        await asyncio.sleep(0.05)
    assert (await health.Check(request)).status == health_pb2.HealthCheckResponse.NOT_SERVING


# --- per-tenant and per-variant policies, budgets -------------------------------------------


OVERRIDES = RouterSettings(
    default_deadline_s=5.0,
    perplexity_threshold=30.0,
    fixed_model=LARGE,
    tenant_policies={"pinned": "fixed"},
    experiment_policies={"router-policy:cascade": "cascade"},
    tenant_budgets={"thrifty": 1e-9, "refused": 1e-9},
)


@pytest.fixture
async def overrides_stub(scorer):
    service = RouterService(OVERRIDES, scorer)
    service.budgets = Budgets(dict(OVERRIDES.tenant_budgets), FakeRedis())
    running = await start_service(service, OVERRIDES, "127.0.0.1:0")
    channel = build_channel(f"127.0.0.1:{running.port}", OVERRIDES)
    yield router_pb2_grpc.RouterServiceStub(channel), service
    await channel.close()
    await running.stop(None)


def tenant_request(tenant="", experiments=None, stream=False):
    context = common_pb2.RequestContext(tenant_id=tenant, experiments=experiments or {})
    return router_pb2.RouteRequest(context=context, prompts=prompts(), stream=stream)


async def test_policy_per_tenant_and_per_variant(overrides_stub):
    stub, _ = overrides_stub
    default = await stub.Route(tenant_request("someone"))
    assert (default.policy, default.model) == ("perplexity", SMALL)
    pinned = await stub.Route(tenant_request("pinned"))
    assert (pinned.policy, pinned.model, pinned.reason) == ("fixed", LARGE, f"fixed {LARGE}")
    # The A/B variant's policy wins over the tenant's.
    variant = await stub.Route(tenant_request("pinned", {"router-policy": "cascade"}))
    assert (variant.policy, variant.model, variant.cascade.escalate_model) == ("cascade", SMALL, LARGE)
    streamed = await stub.Route(tenant_request("pinned", {"router-policy": "cascade"}, stream=True))
    assert streamed.cascade.escalate_model == "" and "streaming" in streamed.reason


async def test_a_spent_budget_degrades_to_the_small_model(overrides_stub, scorer):
    stub, _ = overrides_stub
    scorer.logprob = -math.log(41.2)
    first = await stub.Route(tenant_request("thrifty"))
    assert first.model == LARGE  # the first request spends the tiny budget
    second = await stub.Route(tenant_request("thrifty"))
    assert second.model == SMALL
    assert second.reason.startswith("budget") and second.reason.endswith(f"{SMALL} instead of {LARGE}")


async def test_a_spent_budget_is_refused_when_the_policy_says_so(scorer):
    settings = OVERRIDES.model_copy(update={"budget_exhausted_action": "refuse"})
    service = RouterService(settings, scorer)
    service.budgets = Budgets(dict(settings.tenant_budgets), FakeRedis())
    running = await start_service(service, settings, "127.0.0.1:0")
    channel = build_channel(f"127.0.0.1:{running.port}", settings)
    try:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        await stub.Route(tenant_request("refused"))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Route(tenant_request("refused"))
    finally:
        await channel.close()
        await running.stop(None)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(raised.value)
    assert info.reason == "BUDGET_EXHAUSTED" and int(info.metadata["retry_after_s"]) > 0

    error = from_rpc_error(raised.value, "router")
    assert isinstance(error, BudgetExhausted) and error.http_status == 429
    assert error.headers == {"retry-after": info.metadata["retry_after_s"]}
