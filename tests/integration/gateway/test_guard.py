"""The gateway's guard with fake upstreams: refusals as errors when configured, and the
audit record and token charge a request leaves (real Redis)."""

import json

import httpx
import pytest
import redis

from gateway import audit
from gateway.pipeline import Pipeline
from gateway.rest import create_app
from gateway.tenancy import Tenancy
from mesh.server import start_service
from mesh.settings import MeshSettings
from support.fake_upstreams import BLOCKED_MESSAGE, BLOCKED_WORD, FakeUpstreams, gateway_settings

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
async def upstream():
    running = await start_service(FakeUpstreams(), MeshSettings(), "127.0.0.1:0")
    yield f"127.0.0.1:{running.port}"
    await running.stop(None)


async def _post(settings, body, headers=None):
    pipeline = Pipeline(settings)
    app = create_app(settings, pipeline)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            return await client.post(CHAT, json=body, headers=headers or {})
    finally:
        await app.state.guard.close()
        await pipeline.close()


def _ask(content, **extra):
    return {"model": "auto", "messages": [{"role": "user", "content": content}], **extra}


@pytest.mark.parametrize("stream", [False, True])
async def test_block_as_error_answers_400(upstream, stream):
    settings = gateway_settings(upstream, safety_block_as_error=True)
    response = await _post(settings, _ask(f"a {BLOCKED_WORD} prompt", stream=stream))
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": BLOCKED_MESSAGE,
        "type": "invalid_request_error",
        "param": None,
        "code": "content_filter",
    }


async def test_refusal_by_default_is_200_content_filter(upstream):
    response = await _post(gateway_settings(upstream), _ask(f"a {BLOCKED_WORD} prompt"))
    assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"] == "content_filter"


async def test_a_request_leaves_an_audit_record_and_is_charged(upstream, redis_url, tmp_path):
    url = redis_url.rsplit("/", 1)[0] + "/8"
    redis.Redis.from_url(url).flushdb()
    settings = gateway_settings(
        upstream,
        redis_url=url,
        auth_required=True,
        rate_limits_enabled=True,
        audit_enabled=True,
        audit_include_text=True,
        audit_dir=tmp_path,
    )
    tenancy = Tenancy(settings)
    key, _ = await tenancy.create_key("acme", tpm=1000)
    assert (await _post(settings, _ask("hi"))).status_code == 401
    response = await _post(settings, _ask("mail me: a@b.cn"), {"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    client = redis.Redis.from_url(url, decode_responses=True)
    [(_, fields)] = client.xrange(audit.STREAM)
    record = json.loads(fields["record"])
    assert record["tenant"] == "acme" and record["request_id"] == response.json()["id"]
    assert record["prompt"] == "mail me: [EMAIL]" and record["usage"]["completion_tokens"] > 0
    tokens = client.hget("llmesh:ratelimit:acme:tokens", "level")
    assert float(tokens) < 1000 - record["usage"]["completion_tokens"] + 1
    await tenancy.close()
