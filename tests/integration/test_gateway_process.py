"""``python -m gateway``: both edges in one process, stopped cleanly by SIGTERM."""

import asyncio
import json
import os
import signal
import sys

import httpx

from llmesh.common.v1 import common_pb2
from llmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from mesh.channel import build_channel
from mesh.server import start_service
from mesh.settings import MeshSettings
from support.fake_upstreams import ROUTED_MODEL, FakeUpstreams, reply_for, unused_addr


async def _wait_until_up(url: str, process: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            assert process.returncode is None, "the gateway exited at start"
            try:
                await http.get(url)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    raise AssertionError("the gateway did not start")


async def test_both_edges_serve_and_sigterm_stops_them():
    upstreams = await start_service(FakeUpstreams(), MeshSettings(), "127.0.0.1:0")
    upstream = f"127.0.0.1:{upstreams.port}"
    http_addr, grpc_addr = unused_addr(), unused_addr()
    env = {
        **os.environ,
        "LLMESH_GATEWAY_HTTP_ADDR": http_addr,
        "LLMESH_GATEWAY_GRPC_ADDR": grpc_addr,
        **{f"LLMESH_{name}_ADDR": upstream for name in ("PREPROCESS", "ROUTER", "INFERENCE", "POSTPROCESS")},
        "LLMESH_REDIS_URL": f"redis://{unused_addr()}/0",
        # No Redis here: no API keys, rate limits or audit trail.
        "LLMESH_AUTH_REQUIRED": "false",
        "LLMESH_RATE_LIMITS_ENABLED": "false",
        "LLMESH_AUDIT_ENABLED": "false",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        await _wait_until_up(f"http://{http_addr}/healthz", process)
        async with httpx.AsyncClient(base_url=f"http://{http_addr}") as http:
            response = await http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert response.json()["choices"][0]["message"]["content"] == reply_for(ROUTED_MODEL)

        settings = MeshSettings(default_deadline_s=5.0)
        async with build_channel(grpc_addr, settings) as channel:
            reply = await gateway_pb2_grpc.GatewayServiceStub(channel).Chat(
                gateway_pb2.ChatRequest(messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")])
            )
        assert reply.text == reply_for(ROUTED_MODEL)

        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=15)
        assert process.returncode == 0, stderr.decode()
        messages = [json.loads(line)["msg"] for line in stderr.decode().splitlines() if line.startswith("{")]
        assert "serving" in messages and "shutting down" in messages
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await upstreams.stop(None)
