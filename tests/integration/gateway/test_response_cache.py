"""The response cache through the REST edge, with fake upstreams and a real Redis: a
deterministic request is answered again from the cache (unary and streamed), every hit still
goes through postprocess's current rules, is audited and charged, and no-cache bypasses it; the
semantic cache answers a similar single-turn question of an opted-in tenant, and nothing else."""

import hashlib
import json
import re

import httpx
import numpy as np
import pytest
import redis

from gateway import audit
from gateway.pipeline import Pipeline
from gateway.rest import create_app
from gateway.tenancy import Tenancy
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2
from llmesh.postprocess.v1 import postprocess_pb2
from mesh.server import start_service
from mesh.settings import MeshSettings
from support.fake_upstreams import FakeUpstreams, gateway_settings, reply_for

CHAT = "/v1/chat/completions"


class RulesChange(FakeUpstreams):
    """Postprocess whose output rules can start blocking every answer (a lexicon update)."""

    block_output = False

    async def Postprocess(self, request, context):
        if not self.block_output:
            return await super().Postprocess(request, context)
        self.requests["postprocess"].append(request)
        verdict = common_pb2.SafetyVerdict(blocked=True, rule="lexicon:en:new", message="blocked now")
        return postprocess_pb2.PostprocessResponse(
            text="", verdict=verdict, finish_reason=common_pb2.FINISH_REASON_CONTENT_FILTER
        )


@pytest.fixture
async def upstream():
    fakes = RulesChange()
    running = await start_service(fakes, MeshSettings(), "127.0.0.1:0")
    yield fakes, f"127.0.0.1:{running.port}"
    await running.stop(None)


@pytest.fixture
def settings(upstream, redis_url, tmp_path):
    url = redis_url.rsplit("/", 1)[0] + "/9"
    redis.Redis.from_url(url).flushdb()
    return gateway_settings(
        upstream[1],
        redis_url=url,
        auth_required=True,
        rate_limits_enabled=True,
        audit_enabled=True,
        audit_dir=tmp_path,
        response_cache_enabled=True,
        response_cache_max_entries=3,
    )


@pytest.fixture
async def gateway(settings):
    """An httpx client on an in-process REST edge, with an API key of tenant acme."""
    key, _ = await Tenancy(settings).create_key("acme", tpm=100_000)
    pipeline = Pipeline(settings)
    app = create_app(settings, pipeline)
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://gw", headers=headers) as client:
        client.app = app
        yield client
    await app.state.guard.close()
    await pipeline.close()


def _ask(content="What is 2+2?", **extra):
    return {"model": "llmesh-small", "messages": [{"role": "user", "content": content}], "temperature": 0, **extra}


async def _settled(client):
    """Stores and accounting run after the answer: wait for them."""
    await client.app.state.guard.accounting.flush()
    pipeline = client.app.state.guard.pipeline
    for task in list(pipeline.cache._stores):
        await task


async def test_a_repeated_deterministic_request_is_answered_from_the_cache(gateway, upstream):
    fakes, _ = upstream
    first = await gateway.post(CHAT, json=_ask())
    await _settled(gateway)
    second = await gateway.post(CHAT, json=_ask())
    assert (first.headers["x-llmesh-cache"], second.headers["x-llmesh-cache"]) == ("miss", "hit")
    assert second.json()["choices"][0]["message"]["content"] == reply_for("llmesh-small")
    assert second.json()["usage"] == first.json()["usage"] and second.json()["id"] != first.json()["id"]
    # The hit skipped preprocess, router and inference, not postprocess.
    assert [len(fakes.requests[s]) for s in ("preprocess", "router", "inference", "postprocess")] == [1, 1, 1, 2]


async def test_the_key_holds_the_whole_request(gateway, upstream):
    fakes, _ = upstream
    for body in (_ask(), _ask(max_tokens=5), _ask("What is 3+3?"), _ask(seed=7, temperature=0.8)):
        assert (await gateway.post(CHAT, json=body)).headers["x-llmesh-cache"] == "miss"
        await _settled(gateway)
    # Not deterministic: never cached, and no cache header.
    sampled = await gateway.post(CHAT, json=_ask(temperature=0.7))
    assert "x-llmesh-cache" not in sampled.headers
    assert len(fakes.requests["inference"]) == 5


async def test_no_cache_bypasses_and_a_hit_streams_the_cached_answer(gateway, upstream):
    fakes, _ = upstream
    await gateway.post(CHAT, json=_ask())
    await _settled(gateway)
    bypass = await gateway.post(CHAT, json=_ask(), headers={"cache-control": "no-cache"})
    assert bypass.headers["x-llmesh-cache"] == "bypass" and len(fakes.requests["inference"]) == 2
    async with gateway.stream("POST", CHAT, json=_ask(stream=True, stream_options={"include_usage": True})) as response:
        assert response.headers["x-llmesh-cache"] == "hit"
        events = [
            json.loads(line[6:])
            for line in [line async for line in response.aiter_lines()]
            if line.startswith("data: {")
        ]
    deltas = [e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]]
    assert "".join(deltas) == reply_for("llmesh-small") and len([d for d in deltas if d]) > 1
    assert events[-1]["usage"]["completion_tokens"] > 0 and len(fakes.requests["inference"]) == 2


async def test_a_streamed_miss_is_stored_for_the_next_request(gateway):
    async with gateway.stream("POST", CHAT, json=_ask(stream=True)) as response:
        assert response.headers["x-llmesh-cache"] == "miss"
        await response.aread()
    await _settled(gateway)
    hit = await gateway.post(CHAT, json=_ask())
    assert hit.headers["x-llmesh-cache"] == "hit"
    assert hit.json()["choices"][0]["message"]["content"] == reply_for("llmesh-small")


async def test_a_hit_passes_the_output_rules_of_now_and_is_audited_and_charged(gateway, upstream, settings):
    fakes, _ = upstream
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    # A bucket of 60 tokens a minute refills slowly enough to see both charges.
    client.hset("llmesh:tenant:limits:acme", "tpm", 60)
    await gateway.post(CHAT, json=_ask())
    await _settled(gateway)
    fakes.block_output = True
    hit = await gateway.post(CHAT, json=_ask())
    await _settled(gateway)
    assert hit.headers["x-llmesh-cache"] == "hit"
    assert hit.json()["choices"][0]["finish_reason"] == "content_filter"
    records = [json.loads(fields["record"]) for _, fields in client.xrange(audit.STREAM)]
    assert [r.get("cache") for r in records] == ["miss", "hit"] and records[1]["request_id"] == hit.json()["id"]
    level = float(client.hget("llmesh:ratelimit:acme:tokens", "level"))
    assert level < 60 - 2 * hit.json()["usage"]["total_tokens"] + 3


async def test_the_cache_keeps_at_most_its_bound(gateway, settings):
    for index in range(5):
        await gateway.post(CHAT, json=_ask(f"question {index}"))
        await _settled(gateway)
    client = redis.Redis.from_url(settings.redis_url)
    assert client.zcard("llmesh:cache:index") == 3 and len(client.keys("llmesh:cache:entry:*")) == 3
    # The oldest went first.
    assert (await gateway.post(CHAT, json=_ask("question 0"))).headers["x-llmesh-cache"] == "miss"
    assert (await gateway.post(CHAT, json=_ask("question 4"))).headers["x-llmesh-cache"] == "hit"


# -- the semantic cache ---------------------------------------------------------------------------


class WithEmbeddings(RulesChange):
    """An embedding model that knows words: texts with the same words (case and punctuation
    aside) embed alike."""

    async def Embed(self, request, context):
        self.requests["embed"].append(request)
        embeddings = []
        for text in request.inputs:
            vector = np.zeros(64, dtype=np.float32)
            for word in re.findall(r"\w+", text.lower()):
                vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % 64] += 1
            embeddings.append(inference_pb2.Embedding(values=(vector / np.linalg.norm(vector)).tolist()))
        return inference_pb2.EmbedResponse(model=request.model, embeddings=embeddings)


@pytest.fixture
async def semantic(redis_url, tmp_path):
    """A REST edge whose tenant acme opted in to the semantic cache (tenant other did not)."""
    fakes = WithEmbeddings()
    running = await start_service(fakes, MeshSettings(), "127.0.0.1:0")
    url = redis_url.rsplit("/", 1)[0] + "/10"
    redis.Redis.from_url(url).flushdb()
    settings = gateway_settings(
        f"127.0.0.1:{running.port}",
        redis_url=url,
        auth_required=True,
        audit_dir=tmp_path,
        response_cache_enabled=True,
        semantic_cache_tenants=["acme"],
        semantic_cache_min_similarity=0.99,
    )
    tenancy = Tenancy(settings)
    keys = {tenant: (await tenancy.create_key(tenant))[0] for tenant in ("acme", "other")}
    pipeline = Pipeline(settings)
    app = create_app(settings, pipeline)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        client.app = app

        async def ask(tenant, body):
            response = await client.post(CHAT, json=body, headers={"authorization": f"Bearer {keys[tenant]}"})
            await _settled(client)
            return response

        yield fakes, ask
    await app.state.guard.close()
    await pipeline.close()
    await running.stop(None)


async def test_a_similar_single_turn_question_gets_the_cached_answer(semantic):
    fakes, ask = semantic
    first = await ask("acme", _ask("What is the capital of France?"))
    similar = await ask("acme", _ask("what is the capital of france"))
    other = await ask("acme", _ask("Tell me a story about a cat."))
    assert [r.headers["x-llmesh-cache"] for r in (first, similar, other)] == ["miss", "semantic", "miss"]
    assert similar.json()["choices"][0]["message"]["content"] == reply_for("llmesh-small")
    assert similar.headers["x-llmesh-route-reason"].startswith("cached answer to a similar question")
    assert len(fakes.requests["inference"]) == 2


async def test_the_semantic_cache_is_per_tenant_opt_in_and_single_turn(semantic):
    fakes, ask = semantic
    await ask("acme", _ask("What is the capital of France?"))
    # Another tenant (not opted in) asking the same words: never another tenant's answer.
    assert (await ask("other", _ask("what is the capital of france"))).headers["x-llmesh-cache"] == "miss"
    # The same last question inside a conversation: only the whole conversation could match.
    conversation = _ask("what is the capital of france")
    conversation["messages"] = [
        {"role": "user", "content": "Let us talk about Spain."},
        {"role": "assistant", "content": "Gladly."},
        *conversation["messages"],
    ]
    assert (await ask("acme", conversation)).headers["x-llmesh-cache"] == "miss"
    assert len(fakes.requests["inference"]) == 3
