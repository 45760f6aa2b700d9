"""Inference and router against the real Triton server and the trained models: no fakes.

Starts `tritonserver` once for the module (free ports) with the project's model repository.
"""

import math

import grpc
import pytest

from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.router.v1 import router_pb2, router_pb2_grpc
from mesh.catalog import REPO_ROOT, ModelSpec, default_models
from mesh.channel import build_channel
from mesh.net import free_port
from mesh.server import start_service
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings
from services.router.service import RouterService
from services.router.settings import RouterSettings

ARTIFACTS = REPO_ROOT / "models" / "artifacts"
SMALL, LARGE = "llmesh-small", "llmesh-large"
# In the catalog but never loaded on Triton: every call to it fails there.
GHOST = ModelSpec(name="llmesh-ghost", hf_dir=ARTIFACTS / "small", price_input_per_1k=0, price_output_per_1k=0)

pytestmark = pytest.mark.skipif(
    not (ARTIFACTS / "small" / "model.safetensors").is_file(),
    reason="no trained model in models/artifacts/small (run `python -m models.train`)",
)


@pytest.fixture(scope="module")
def triton_addr():
    from services.inference.triton_server import TritonServer

    # Any HF causal LM can stand in for another; without a trained large model the small one does.
    env = {}
    if not (ARTIFACTS / "large" / "model.safetensors").is_file():
        env["LLMESH_LARGE_MODEL_DIR"] = str(ARTIFACTS / "small")
    with TritonServer(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), env=env) as server:
        yield server.grpc_url


@pytest.fixture(scope="module")
def prompt_ids():
    from transformers import AutoTokenizer

    # Plain text rather than a chat turn: a model may well end a chat turn at once, and these
    # tests need tokens to come back.
    return AutoTokenizer.from_pretrained(ARTIFACTS / "small").encode("Once upon a time, there was")


async def _serve(service, settings, stub_class):
    """Yields a stub of ``service`` running in-process; the service's Triton client closes after."""
    running = await start_service(service, settings, "127.0.0.1:0")
    async with build_channel(f"127.0.0.1:{running.port}", settings) as channel:
        yield stub_class(channel)
    await running.stop(None)
    await service.close()


@pytest.fixture(scope="module")
async def inference(triton_addr):
    settings = InferenceSettings(triton_grpc_addr=triton_addr, models=[*default_models(), GHOST], default_deadline_s=60)
    async for stub in _serve(InferenceService(settings), settings, inference_pb2_grpc.InferenceServiceStub):
        yield stub


@pytest.fixture(scope="module")
async def router(triton_addr):
    settings = RouterSettings(triton_grpc_addr=triton_addr, default_deadline_s=60, score_timeout_s=30)
    async for stub in _serve(RouterService(settings), settings, router_pb2_grpc.RouterServiceStub):
        yield stub


def generate_request(prompt_ids, model=SMALL, fallbacks=()):
    return inference_pb2.GenerateRequest(
        model=model,
        fallback_models=fallbacks,
        prompt_token_ids=prompt_ids,
        # Seeded, so that a stream and a unary call sample the same tokens.
        sampling=common_pb2.SamplingParams(max_tokens=8, temperature=1.0, seed=7),
    )


async def test_stream_carries_real_tokens(inference, prompt_ids):
    responses = [r async for r in inference.GenerateStream(generate_request(prompt_ids))]
    token_ids = [t for r in responses for t in r.token_ids]
    logprobs = [p for r in responses for p in r.token_logprobs]
    # The bytes of the tensors arrived (an empty tensor would have failed the call).
    assert 0 < len(token_ids) <= 8 and len(logprobs) == len(token_ids)
    assert all(math.isfinite(p) and p <= 0 for p in logprobs)
    last = responses[-1]
    assert last.finish_reason in (common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_LENGTH)
    assert last.usage.completion_tokens == len(token_ids)
    assert last.usage.prompt_tokens == len(prompt_ids)


async def test_seeded_unary_matches_stream(inference, prompt_ids):
    streamed = [t async for r in inference.GenerateStream(generate_request(prompt_ids)) for t in r.token_ids]
    response = await inference.Generate(generate_request(prompt_ids))
    assert (response.model, list(response.token_ids)) == (SMALL, streamed)


async def test_fails_over_when_triton_refuses_the_model(inference, prompt_ids):
    response = await inference.Generate(generate_request(prompt_ids, model=GHOST.name, fallbacks=[LARGE]))
    assert response.model == LARGE and len(response.token_ids) > 0


async def test_router_scores_with_the_real_model(router, prompt_ids):
    response = await router.Route(router_pb2.RouteRequest(prompt_token_ids=prompt_ids))
    perplexity = response.signals["perplexity"]
    assert math.isfinite(perplexity) and perplexity > 1
    assert response.model == (LARGE if perplexity > RouterSettings().perplexity_threshold else SMALL)
    assert response.reason.startswith(f"perplexity {perplexity:.1f}")


async def test_unknown_model_never_reaches_triton(inference, prompt_ids):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await inference.Generate(generate_request(prompt_ids, model="gpt-9"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
