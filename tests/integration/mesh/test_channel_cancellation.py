"""A caller that is cancelled (its client left) cancels its unary RPC upstream too, through
every interceptor of mesh.channel, tracing's included: the server stops working for it."""

import asyncio

from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from mesh.channel import build_channel
from mesh.server import start_service
from mesh.settings import MeshSettings
from support.fake_upstreams import FakeUpstreams


async def test_cancelling_the_caller_cancels_the_unary_rpc_upstream():
    fakes = FakeUpstreams()
    fakes.generate_delay_s = 3.0
    running = await start_service(fakes, MeshSettings(), "127.0.0.1:0")
    try:
        stub = inference_pb2_grpc.InferenceServiceStub(build_channel(f"127.0.0.1:{running.port}", MeshSettings()))
        caller = asyncio.ensure_future(stub.Generate(inference_pb2.GenerateRequest(model="llmesh-small")))
        for _ in range(50):
            if fakes.generating:
                break
            await asyncio.sleep(0.02)
        assert fakes.generating == 1
        caller.cancel()
        # Well before the 3 s generation would have ended, the server has stopped it.
        for _ in range(40):
            if not fakes.generating:
                break
            await asyncio.sleep(0.05)
        assert fakes.generating == 0
    finally:
        await running.stop(None)
