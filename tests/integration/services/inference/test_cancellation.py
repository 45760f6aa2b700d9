"""A client that goes away mid-call leaves no ERROR (and no traceback) in the service's log.

grpc.aio closed the response generator of a cancelled stream from another task, and
OpenTelemetry's server interceptor logged "Failed to detach context" at ERROR each time.
"""

import asyncio
import logging

import pytest

from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.postprocess.v1 import postprocess_pb2, postprocess_pb2_grpc
from mesh.channel import build_channel
from mesh.server import start_service
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings
from services.inference.triton_client import Chunk
from services.postprocess.service import PostprocessService
from services.postprocess.settings import PostprocessSettings
from support.fake_triton import FakeTriton
from support.settle import settle_after_cancel
from support.tokenizer import build_tokenizer, catalog, wait_until_serving

MODEL = "llmesh-small"


class EndlessTriton(FakeTriton):
    """One chunk, then nothing until the caller gives up."""

    def __init__(self) -> None:
        super().__init__({MODEL: []})

    async def generate_stream(self, model, prompt_ids, params, span_name="", version=None):
        yield Chunk(0, [11, 12], [-0.5, -0.25])
        await asyncio.sleep(3600)


def _errors(caplog) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.fixture
async def inference(spans):
    settings = InferenceSettings(default_deadline_s=10.0)
    running = await start_service(InferenceService(settings, EndlessTriton()), settings, "127.0.0.1:0")
    channel = build_channel(f"127.0.0.1:{running.port}", settings)
    yield inference_pb2_grpc.InferenceServiceStub(channel)
    await channel.close()
    await running.stop(None)


@pytest.fixture
async def postprocess(spans, tmp_path):
    settings = PostprocessSettings(models=catalog(build_tokenizer(tmp_path), MODEL), default_deadline_s=10)
    service = PostprocessService(settings)
    running = await start_service(service, settings, "127.0.0.1:0")
    channel = build_channel(f"127.0.0.1:{running.port}", settings)
    await wait_until_serving(channel, "llmesh.postprocess.v1.PostprocessService")
    yield postprocess_pb2_grpc.PostprocessServiceStub(channel)
    await channel.close()
    await running.stop(None)
    await service.close()


def _generate_request() -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        model=MODEL,
        prompts=[common_pb2.ModelPrompt(model=MODEL, token_ids=[1, 2, 3])],
        sampling=common_pb2.SamplingParams(max_tokens=8),
    )


async def test_inference_stream_closed_early_logs_no_error(inference, caplog):
    caplog.set_level(logging.DEBUG)
    call = inference.GenerateStream(_generate_request())
    first = await call.read()
    assert list(first.delta.token_ids) == [11, 12]
    call.cancel()
    await settle_after_cancel()
    assert _errors(caplog) == []


async def test_inference_unary_abandoned_logs_no_error(inference, caplog):
    caplog.set_level(logging.DEBUG)
    call = inference.Generate(_generate_request())
    await asyncio.sleep(0.3)  # the service is waiting for the rest of the answer
    call.cancel()
    await settle_after_cancel()
    assert _errors(caplog) == []


async def test_postprocess_stream_closed_early_logs_no_error(postprocess, caplog):
    caplog.set_level(logging.DEBUG)
    requests: asyncio.Queue = asyncio.Queue()

    async def feed():
        while True:
            yield await requests.get()

    call = postprocess.PostprocessStream(feed())
    await requests.put(postprocess_pb2.PostprocessStreamRequest(model=MODEL, token_ids=[40, 41]))
    await call.read()
    call.cancel()
    await settle_after_cancel()
    assert _errors(caplog) == []
