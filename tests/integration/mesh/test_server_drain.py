"""SIGTERM to a process while a stream is in flight: the process reports NOT_SERVING, the
stream completes, the process exits 0 — for a service (mesh.server.run_service, which every
service uses) and for the gateway (the same runner, with its REST edge drained alongside)."""

import asyncio
import json
import os
import signal
import sys

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from mesh.server import start_service
from mesh.settings import MeshSettings
from support.fake_upstreams import CHUNK, ROUTED_MODEL, SLOW_STREAM, FakeUpstreams, reply_for, unused_addr

# Long enough to observe NOT_SERVING before the server stops taking calls.
DRAIN_ENV = {"LLMESH_SHUTDOWN_NOTICE_S": "0.5", "LLMESH_SHUTDOWN_GRACE_S": "10"}


async def _health(channel: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
    return response.status


async def _exited_cleanly(process: asyncio.subprocess.Process) -> list[str]:
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0, stderr.decode()
    return [json.loads(line)["msg"] for line in stderr.decode().splitlines() if line.startswith("{")]


async def test_a_service_finishes_its_stream_after_sigterm():
    addr = unused_addr()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "LLMESH_LISTEN_ADDR": addr, **DRAIN_ENV}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "support.fake_service", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with grpc.aio.insecure_channel(addr) as channel:
            for _ in range(200):
                try:
                    if await _health(channel) == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)
            prompt = f"tell it {SLOW_STREAM}".encode()
            request = inference_pb2.GenerateRequest(
                model=ROUTED_MODEL, prompts=[common_pb2.ModelPrompt(model=ROUTED_MODEL, token_ids=list(prompt))]
            )
            stream = inference_pb2_grpc.InferenceServiceStub(channel).GenerateStream(request, timeout=15)
            chunks = [await anext(aiter(stream))]
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            assert await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            chunks += [chunk async for chunk in stream]
        text = bytes(token for chunk in chunks for token in chunk.delta.token_ids).decode()
        assert text == reply_for(ROUTED_MODEL) and len(chunks) > len(text) // CHUNK
        assert chunks[-1].usage.completion_tokens == len(text)
        assert "shutting down" in await _exited_cleanly(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_gateway_finishes_its_sse_stream_after_sigterm():
    upstreams = await start_service(FakeUpstreams(), MeshSettings(), "127.0.0.1:0")
    upstream = f"127.0.0.1:{upstreams.port}"
    http_addr = unused_addr()
    env = {
        **os.environ,
        **DRAIN_ENV,
        "LLMESH_GATEWAY_HTTP_ADDR": http_addr,
        "LLMESH_GATEWAY_GRPC_ADDR": unused_addr(),
        **{f"LLMESH_{name}_ADDR": upstream for name in ("PREPROCESS", "ROUTER", "INFERENCE", "POSTPROCESS")},
        "LLMESH_REDIS_URL": f"redis://{unused_addr()}/0",
        "LLMESH_AUTH_REQUIRED": "false",
        "LLMESH_RATE_LIMITS_ENABLED": "false",
        "LLMESH_AUDIT_ENABLED": "false",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", env=env, stderr=asyncio.subprocess.PIPE
    )
    body = {"model": ROUTED_MODEL, "stream": True, "messages": [{"role": "user", "content": f"say it {SLOW_STREAM}"}]}
    try:
        async with httpx.AsyncClient(base_url=f"http://{http_addr}", timeout=15) as http:
            for _ in range(200):
                try:
                    await http.get("/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                lines = aiter(response.aiter_lines())
                events = [await anext(lines)]
                process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.2)
                async with httpx.AsyncClient(base_url=f"http://{http_addr}", timeout=5) as probe:
                    ready = await probe.get("/readyz")
                assert ready.status_code == 503 and ready.json()["status"] == "draining"
                events += [line async for line in lines]
        data = [line.removeprefix("data: ") for line in events if line.startswith("data: ")]
        assert data[-1] == "[DONE]"
        text = "".join(
            json.loads(d)["choices"][0]["delta"].get("content") or "" for d in data[:-1] if json.loads(d)["choices"]
        )
        assert text == reply_for(ROUTED_MODEL)
        assert "shutting down" in await _exited_cleanly(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await upstreams.stop(None)
