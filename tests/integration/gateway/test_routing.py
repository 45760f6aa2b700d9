"""The gateway's side of routing policies, over fake upstreams: the cascade's escalation (unary
only) and a spent budget answered with 429 and Retry-After."""

import grpc
import httpx
import pytest

from gateway.pipeline import Pipeline
from gateway.rest import create_app
from llmesh.inference.v1 import inference_pb2
from llmesh.router.v1 import router_pb2
from mesh.errors import abort
from support.fake_upstreams import FakeUpstreams, gateway_settings

CHAT = "/v1/chat/completions"
SMALL, LARGE = "llmesh-small", "smollm2-135m-instruct"
UNSURE, BROKE = "unsure", "broke"


class RoutingUpstreams(FakeUpstreams):
    """The router cascades (or refuses, for a broke tenant's prompt); the small model is unsure
    of its answer when the prompt says so."""

    async def Route(self, request, context):
        self.requests["router"].append(request)
        if BROKE in request.prompts[0].text:
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "budget spent",
                "BUDGET_EXHAUSTED",
                tenant="t",
                retry_after_s="120",
            )
        if request.stream:
            return router_pb2.RouteResponse(model=SMALL, reason="cascade (streaming, no escalation): fake")
        return router_pb2.RouteResponse(
            model=SMALL,
            fallback_models=[LARGE],
            reason="cascade: llmesh-small first",
            policy="cascade",
            cascade=router_pb2.Cascade(escalate_model=LARGE, min_mean_logprob=-2.0),
        )

    async def Generate(self, request, context):
        answer = await super().Generate(request, context)
        prompt = next(p for p in request.prompts if p.model == request.model)
        unsure = request.model == SMALL and UNSURE in bytes(prompt.token_ids).decode()
        choice = answer.choices[0]
        choice.token_logprobs.extend([-3.0 if unsure else -0.5] * len(choice.token_ids))
        return answer


@pytest.fixture(scope="module")
def fake_upstreams():
    return RoutingUpstreams()


@pytest.fixture(scope="module")
async def client(upstreams):
    settings = gateway_settings(upstreams[1])
    pipeline = Pipeline(settings)
    transport = httpx.ASGITransport(app=create_app(settings, pipeline))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield client
    await pipeline.close()


def chat(content, stream=False):
    return {"model": "auto", "messages": [{"role": "user", "content": content}], "stream": stream}


def generated_models(upstreams) -> list[str]:
    return [r.model for r in upstreams[0].requests["inference"]]


async def test_a_confident_small_answer_is_kept(client, upstreams):
    upstreams[0].requests.clear()
    response = await client.post(CHAT, json=chat("easy"))
    assert response.status_code == 200, response.text
    assert response.headers["x-llmesh-model"] == SMALL
    assert response.headers["x-llmesh-route-reason"] == "cascade: llmesh-small answer logprob -0.50 >= -2.00, kept"
    assert generated_models(upstreams) == [SMALL]


async def test_an_unsure_small_answer_is_escalated(client, upstreams):
    upstreams[0].requests.clear()
    response = await client.post(CHAT, json=chat(f"{UNSURE} question"))
    assert response.status_code == 200, response.text
    assert response.headers["x-llmesh-model"] == LARGE
    assert response.headers["x-llmesh-route-reason"] == (
        "cascade: llmesh-small answer logprob -3.00 < -2.00, escalated to smollm2-135m-instruct"
    )
    assert generated_models(upstreams) == [SMALL, LARGE]
    assert isinstance(upstreams[0].requests["inference"][1], inference_pb2.GenerateRequest)


async def test_a_stream_is_routed_up_front_and_never_escalated(client, upstreams):
    upstreams[0].requests.clear()
    response = await client.post(CHAT, json=chat(f"{UNSURE} question", stream=True))
    assert response.status_code == 200, response.text
    assert response.headers["x-llmesh-route-reason"] == "cascade (streaming, no escalation): fake"
    assert upstreams[0].requests["router"][0].stream
    assert generated_models(upstreams) == [SMALL]


async def test_a_spent_budget_is_429_with_retry_after(client):
    response = await client.post(CHAT, json=chat(f"{BROKE} tenant"))
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "120"
    assert response.json()["error"]["type"] == "insufficient_quota"
    assert response.json()["error"]["code"] == "budget_exhausted"
