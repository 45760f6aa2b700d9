"""A/B tests through the gateway over fake upstreams and a real Redis: variant routing to
another deployment, headers, stickiness, forcing, model experiments, feedback, shadow, report."""

import asyncio

import httpx
import pytest

from gateway.experiments.definitions import Experiment
from gateway.experiments.store import ExperimentStore
from gateway.pipeline import Pipeline
from gateway.rest import create_app
from mesh import semconv
from mesh.server import start_service
from mesh.settings import MeshSettings
from support.fake_upstreams import FakeUpstreams, gateway_settings

ADMIN = {"authorization": "Bearer admin-secret"}
CHAT = "/v1/chat/completions"


def ask(user: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": "hi"}], "user": user, "max_tokens": 8, **extra}


@pytest.fixture(scope="module")
async def deployments():
    """The primary deployment of every service, and a second one ("b") of the router."""
    primary, b = FakeUpstreams(), FakeUpstreams()
    running = [await start_service(fakes, MeshSettings(), "127.0.0.1:0") for fakes in (primary, b)]
    yield (primary, f"127.0.0.1:{running[0].port}"), (b, f"127.0.0.1:{running[1].port}")
    for server in running:
        await server.stop(None)


@pytest.fixture
async def gateway(deployments, redis_url):
    (primary, primary_addr), (b, b_addr) = deployments
    store = ExperimentStore.from_url(redis_url)
    await store.redis.flushdb()
    settings = gateway_settings(
        primary_addr, redis_url=redis_url, admin_key="admin-secret", variant_addrs={"router": {"b": b_addr}}
    )
    pipeline = Pipeline(settings)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings, pipeline)), base_url="http://gw")
    for fakes in (primary, b):
        fakes.requests.clear()
    async with client:
        yield client, primary, b, store
    await pipeline.close()
    await store.close()


async def put(client, definition: dict) -> None:
    response = await client.put(f"/admin/experiments/{definition['name']}", json=definition, headers=ADMIN)
    assert response.status_code == 200, response.text


async def report(client, name: str, requests: int) -> dict:
    """The report once the figures of ``requests`` requests are written (they are written after
    the answers, in the background)."""
    for _ in range(100):
        body = (await client.get(f"/admin/experiments/{name}/report", headers=ADMIN)).json()
        if body["total_requests"] >= requests:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"only {body['total_requests']} of {requests} requests recorded")


ROUTER_AB = {
    "name": "router-ab",
    "target": {"kind": "service", "service": "router"},
    "unit": "user",
    "variants": [{"name": "a", "weight": 5000}, {"name": "b", "weight": 5000, "deployment": "b"}],
}


async def test_service_variant_is_served_by_its_deployment(gateway):
    client, primary, b, _ = gateway
    await put(client, ROUTER_AB)
    served = {}
    for index in range(30):
        response = await client.post(CHAT, json=ask(f"user-{index}"))
        assert response.status_code == 200, response.text
        served[f"user-{index}"] = response.headers["x-llmesh-experiment-router-ab"]
    assert set(served.values()) == {"a", "b"}
    # Only the router is steered: b's requests reached the b router and the primary everything else.
    routed_by_b = {request.context.user_id for request in b.requests["router"]}
    assert routed_by_b == {user for user, variant in served.items() if variant == "b"}
    assert len(primary.requests["inference"]) == 30 and not b.requests["inference"]
    # Every service saw the assignment in the request context.
    assert all(r.context.experiments["router-ab"] == served[r.context.user_id] for r in primary.requests["inference"])

    result = await report(client, "router-ab", 30)
    assert {v["name"]: v["requests"] for v in result["variants"]} == {
        variant: list(served.values()).count(variant) for variant in ("a", "b")
    }
    assert all(v["metrics"]["latency_s"]["n"] == v["requests"] for v in result["variants"])
    chart = await client.get("/admin/experiments/router-ab/chart.png", headers=ADMIN)
    assert chart.status_code == 200 and chart.content.startswith(b"\x89PNG")


async def test_gateway_span_carries_the_assignment(gateway, spans):
    client, *_ = gateway
    await put(client, ROUTER_AB)
    spans.clear()
    response = await client.post(CHAT, json=ask("traced-user"))
    chat = next(span for span in spans.get_finished_spans() if span.name == semconv.SPAN_GATEWAY_CHAT)
    variant = response.headers["x-llmesh-experiment-router-ab"]
    assert chat.attributes[semconv.LLMESH_EXPERIMENT_PREFIX + "router-ab"] == variant


async def test_assignment_is_sticky_and_forcible(gateway):
    client, *_ = gateway
    await put(client, ROUTER_AB)
    first = [(await client.post(CHAT, json=ask(f"u{i}"))).headers["x-llmesh-experiment-router-ab"] for i in range(10)]
    again = [(await client.post(CHAT, json=ask(f"u{i}"))).headers["x-llmesh-experiment-router-ab"] for i in range(10)]
    assert first == again
    forced = await client.post(CHAT, json=ask("u0"), headers={"x-llmesh-force-variant": "router-ab=b"})
    assert forced.headers["x-llmesh-experiment-router-ab"] == "b"
    for bad in ("router-ab=c", "nope=a", "router-ab"):
        response = await client.post(CHAT, json=ask("u0"), headers={"x-llmesh-force-variant": bad})
        assert response.status_code == 400, bad
    # Forced requests are served but not counted.
    assert (await report(client, "router-ab", 20))["total_requests"] == 20


async def test_streams_carry_assignments_and_ttft(gateway):
    client, *_ = gateway
    await put(client, ROUTER_AB)
    for index in range(6):
        async with client.stream("POST", CHAT, json=ask(f"s{index}", stream=True)) as response:
            assert response.headers["x-llmesh-experiment-router-ab"] in ("a", "b")
            await response.aread()
    result = await report(client, "router-ab", 6)
    assert sum(v["metrics"]["ttft_s"]["n"] for v in result["variants"]) == 6


async def test_model_experiment_and_feedback(gateway):
    client, *_ = gateway
    await put(
        client,
        {
            "name": "models",
            "target": {"kind": "model"},
            "unit": "request",
            "variants": [
                {"name": "small", "weight": 5000, "model": "llmesh-small"},
                {"name": "large", "weight": 5000, "model": "smollm2-135m-instruct"},
            ],
        },
    )
    answers = [await client.post(CHAT, json=ask("anyone")) for _ in range(20)]
    for answer in answers:
        variant = answer.headers["x-llmesh-experiment-models"]
        assert answer.json()["model"] == {"small": "llmesh-small", "large": "smollm2-135m-instruct"}[variant]
        score = 1.0 if variant == "large" else 0.0
        feedback = await client.post("/v1/feedback", json={"request_id": answer.json()["id"], "score": score})
        assert feedback.status_code == 200 and feedback.json()["experiments"] == {"models": variant}
    # A model named by the client is left alone.
    explicit = await client.post(CHAT, json=ask("anyone", model="llmesh-small"))
    assert explicit.json()["model"] == "llmesh-small"
    unknown = await client.post("/v1/feedback", json={"request_id": "chatcmpl-nope", "score": 1})
    assert unknown.status_code == 404

    result = await report(client, "models", 21)
    by_name = {v["name"]: v for v in result["variants"]}
    assert by_name["large"]["metrics"]["feedback"]["mean"] == 1.0
    assert by_name["small"]["metrics"]["feedback"]["mean"] == 0.0
    # Prices from the catalog: the large model costs more per token.
    assert by_name["large"]["metrics"]["cost"]["mean"] > by_name["small"]["metrics"]["cost"]["mean"]


async def test_shadow_is_mirrored_compared_and_never_returned(gateway, spans):
    client, _, b, _ = gateway
    await put(
        client,
        {
            "name": "shadowed",
            "target": {"kind": "service", "service": "router"},
            "unit": "request",
            "variants": [{"name": "a", "weight": 10000}, {"name": "off", "weight": 0}],
            "shadow": {"name": "router-b", "deployment": "b", "share": 10000},
        },
    )
    spans.clear()
    for _ in range(4):
        response = await client.post(CHAT, json=ask("x"))
        assert response.headers["x-llmesh-experiment-shadowed"] == "a"
    for _ in range(100):
        result = (await client.get("/admin/experiments/shadowed/report", headers=ADMIN)).json()
        if result["shadow"]["mirrored"] >= 4:
            break
        await asyncio.sleep(0.05)
    shadow = result["shadow"]
    assert shadow["mirrored"] >= 1 and shadow["same_text"]["rate"] == 1.0
    assert all(r.context.experiments["shadowed"] == "shadow:router-b" for r in b.requests["router"])
    assert result["total_requests"] == 4
    # Each shadow is a trace of its own (a root gateway span), not a part of the primary's.
    chats = [span for span in spans.get_finished_spans() if span.name == semconv.SPAN_GATEWAY_CHAT]
    assert sum(span.parent is None for span in chats) == shadow["mirrored"]


async def test_admin_rejects_what_this_gateway_cannot_serve(gateway):
    client, *_ = gateway
    bad = {**ROUTER_AB, "variants": [{"name": "a", "weight": 5000}, {"name": "c", "weight": 5000, "deployment": "c"}]}
    response = await client.put("/admin/experiments/router-ab", json=bad, headers=ADMIN)
    assert response.status_code == 400 and "no address" in response.json()["error"]["message"]
    uneven = {**ROUTER_AB, "variants": [{"name": "a", "weight": 5000}, {"name": "b", "weight": 4000}]}
    assert (await client.put("/admin/experiments/router-ab", json=uneven, headers=ADMIN)).status_code == 400
    assert (await client.put("/admin/experiments/router-ab", json=ROUTER_AB)).status_code == 401
    chart = await client.get("/admin/experiments/nope/chart.png", headers=ADMIN)
    assert chart.status_code == 404


async def test_definitions_file_is_hot_reloaded(deployments, redis_url, tmp_path):
    (_, primary_addr), _ = deployments
    store = ExperimentStore.from_url(redis_url)
    await store.redis.flushdb()
    path = tmp_path / "experiments.yaml"
    definition = """
name: from-file
target: {kind: model}
unit: user
variants:
  - {name: small, weight: %d, model: llmesh-small}
  - {name: large, weight: %d, model: smollm2-135m-instruct}
"""
    path.write_text(definition % (10000, 0))
    settings = gateway_settings(primary_addr, redis_url=redis_url, experiments_file=path, experiments_refresh_s=0.05)
    pipeline = Pipeline(settings)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings, pipeline)), base_url="http://gw")

    async def variant_of_u1() -> str | None:
        for _ in range(100):
            response = await client.post(CHAT, json=ask("u1"))
            if "x-llmesh-experiment-from-file" in response.headers:
                return response.headers["x-llmesh-experiment-from-file"]
            await asyncio.sleep(0.05)
        return None

    async with client:
        assert await variant_of_u1() == "small"
        # An edit of the file reaches the serving gateway without a restart.
        path.write_text(definition % (0, 10000))
        for _ in range(100):
            if await variant_of_u1() == "large":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the edited file was not reloaded")
    await pipeline.close()
    await store.close()


async def test_redis_down_neither_fails_nor_unassigns_requests(deployments):
    """Figures are written after the answer, so an unreachable Redis only loses figures."""
    (_, primary_addr), (_, b_addr) = deployments
    settings = gateway_settings(primary_addr, variant_addrs={"router": {"b": b_addr}})  # Redis: nothing listens
    pipeline = Pipeline(settings)
    pipeline.experiments.install([Experiment.model_validate(ROUTER_AB)])
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings, pipeline)), base_url="http://gw")
    async with client:
        responses = [await client.post(CHAT, json=ask(f"user-{index}")) for index in range(6)]
    await pipeline.close()
    assert all(response.status_code == 200 for response in responses)
    assert {response.headers["x-llmesh-experiment-router-ab"] for response in responses} <= {"a", "b"}
