"""Fault injection through the gateway to a real gRPC server (mesh.faults): refused without the
admin key, applied to the named service only, passed on from the REST edge, off by default."""

import time

import httpx
import pytest

from gateway.pipeline import Pipeline
from gateway.rest import create_app
from mesh.server import start_service
from mesh.settings import MeshSettings
from support.fake_upstreams import FakeUpstreams, gateway_settings

CHAT = "/v1/chat/completions"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
ADMIN_KEY = "admin-secret"


async def _upstream(**settings):
    return await start_service(FakeUpstreams(), MeshSettings(service_name="inference", **settings), "127.0.0.1:0")


async def _post(upstream_port: int, headers: dict, **settings) -> httpx.Response:
    settings = gateway_settings(f"127.0.0.1:{upstream_port}", **settings)
    pipeline = Pipeline(settings)
    app = create_app(settings, pipeline)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=10
        ) as client:
            return await client.post(CHAT, json=BODY, headers=headers)
    finally:
        await app.state.guard.close()
        await app.state.batches.close()
        await pipeline.close()


@pytest.fixture
async def faulty():
    running = await _upstream(fault_injection_enabled=True, admin_key=ADMIN_KEY)
    yield running.port
    await running.stop(None)


ENABLED = {"fault_injection_enabled": True, "admin_key": ADMIN_KEY}


async def test_a_fault_header_without_the_admin_key_is_refused(faulty):
    response = await _post(faulty, {"x-llmesh-fault": "inference:abort=UNAVAILABLE"}, **ENABLED)
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"
    assert "admin key" in response.json()["error"]["message"]


async def test_an_abort_reaches_the_named_service_only(faulty):
    key = {"x-llmesh-admin-key": ADMIN_KEY}
    aborted = await _post(faulty, {"x-llmesh-fault": "inference:abort=UNAVAILABLE", **key}, **ENABLED)
    assert aborted.status_code == 503 and aborted.json()["error"]["code"] == "fault_injected"
    elsewhere = await _post(faulty, {"x-llmesh-fault": "router:abort=UNAVAILABLE", **key}, **ENABLED)
    assert elsewhere.status_code == 200


async def test_a_delay_of_the_gateway_itself(faulty):
    headers = {"x-llmesh-fault": "gateway:delay=0.4", "x-llmesh-admin-key": ADMIN_KEY}
    started = time.monotonic()
    response = await _post(faulty, headers, **ENABLED)
    assert response.status_code == 200 and time.monotonic() - started >= 0.4


async def test_a_configured_fault_applies_without_any_header():
    running = await _upstream(fault_injection_enabled=True, fault_abort_share=1.0, fault_abort_code="INTERNAL")
    try:
        response = await _post(running.port, {})
        assert response.status_code == 502 and response.json()["error"]["code"] == "fault_injected"
    finally:
        await running.stop(None)


async def test_off_unless_enabled():
    running = await _upstream(admin_key=ADMIN_KEY)
    try:
        headers = {"x-llmesh-fault": "inference:abort=UNAVAILABLE", "x-llmesh-admin-key": ADMIN_KEY}
        assert (await _post(running.port, headers, admin_key=ADMIN_KEY)).status_code == 200
    finally:
        await running.stop(None)
