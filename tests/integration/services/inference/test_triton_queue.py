"""Triton's bounded queue (``max_queue_size``) against the real tritonserver: a full queue is
answered OVERLOADED by the inference service at once, without counting against the model's breaker.

The project's embedding model (no vLLM; it embeds one request at a time), served by a Triton of
its own from a copy of its repository entry whose only change is a queue bound of 1."""

import asyncio
import time

import grpc
import pytest
from google.protobuf import text_format
from prometheus_client import REGISTRY
from tritonclient.grpc import model_config_pb2

from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from mesh import semconv
from mesh.channel import build_channel
from mesh.errors import error_info
from mesh.net import free_ports
from mesh.server import start_service
from services.inference.admission import TRITON_QUEUE_FULL
from services.inference.circuit import State
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings
from services.inference.triton_server import MODEL_REPOSITORY, TritonServer

EMBEDDER = "all-minilm-l6-v2"
# Long enough (a second or more of work on one core) that the other requests arrive while it runs.
TEXTS = [" ".join(f"word{i} of a long sentence about load shedding" for i in range(30))] * 6


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    work = tmp_path_factory.mktemp("triton-queue")
    source = MODEL_REPOSITORY / EMBEDDER
    config = text_format.Parse((source / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 16
    config.dynamic_batching.default_queue_policy.max_queue_size = 1
    (work / "models" / EMBEDDER).mkdir(parents=True)
    (work / "models" / EMBEDDER / "config.pbtxt").write_text(text_format.MessageToString(config))
    # A link: model.py finds the repository root from its own resolved path.
    (work / "models" / EMBEDDER / "1").symlink_to(source / "1")
    http, grpc_port, metrics = free_ports(3)
    with TritonServer(
        http_port=http,
        grpc_port=grpc_port,
        metrics_port=metrics,
        models=[EMBEDDER],
        model_repository=work / "models",
        log_file=work / "tritonserver.log",
        # Nothing is left in flight to drain at the end.
        exit_timeout_s=1,
    ) as t:
        yield t


@pytest.fixture
async def inference(triton, redis_url):
    # Room enough in the service's own admission: what refuses here is Triton's queue.
    settings = InferenceSettings(triton_grpc_addr=triton.grpc_url, redis_url=redis_url, default_deadline_s=60)
    service = InferenceService(settings)
    running = await start_service(service, settings, "127.0.0.1:0")
    async with build_channel(f"127.0.0.1:{running.port}", settings) as channel:
        yield service, inference_pb2_grpc.InferenceServiceStub(channel)
    await running.stop(None)
    await service.close()


def refusals() -> float:
    labels = {"model": EMBEDDER, "reason": TRITON_QUEUE_FULL, "priority": "interactive"}
    return REGISTRY.get_sample_value(semconv.METRIC_INFERENCE_MODEL_REFUSALS, labels) or 0.0


async def test_a_full_triton_queue_is_answered_overloaded_at_once(triton, inference):
    service, stub = inference
    before = refusals()

    async def embed():
        started = time.monotonic()
        try:
            await stub.Embed(inference_pb2.EmbedRequest(model=EMBEDDER, inputs=TEXTS), timeout=60)
            return None, time.monotonic() - started
        except grpc.aio.AioRpcError as error:
            return error, time.monotonic() - started

    outcomes = await asyncio.gather(*(embed() for _ in range(8)))
    answered = [seconds for error, seconds in outcomes if error is None]
    refused = [(error, seconds) for error, seconds in outcomes if error is not None]
    # One running and one waiting in Triton; the rest refused by its queue.
    assert len(answered) >= 2 and refused, outcomes
    for error, _ in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        info = error_info(error)
        assert info is not None and info.reason == "OVERLOADED"
        assert dict(info.metadata) == {"retry_after": "1", EMBEDDER: TRITON_QUEUE_FULL}
    # Refused at once, not after waiting for a slot: quicker than any request that was answered.
    assert max(seconds for _, seconds in refused) < min(answered), outcomes
    assert refusals() == before + len(refused)
    assert service.breakers[EMBEDDER].state is State.CLOSED
