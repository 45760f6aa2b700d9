"""The inference and router services against the real Triton server and its vLLM engines: no fakes."""

import math

import grpc
import pytest
from transformers import AutoTokenizer

from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmesh.router.v1 import router_pb2, router_pb2_grpc
from mesh.catalog import ModelSpec, default_models, find_model
from mesh.channel import build_channel
from mesh.errors import error_info
from mesh.server import start_service
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings
from services.router.service import RouterService
from services.router.settings import RouterSettings
from textkit.tokenizers import render_chat

SMOL, SMALL = "smollm2-135m-instruct", "llmesh-small"
# In the catalog (with llmesh-small's tokenizer) but never loaded on Triton: every call fails there.
GHOST = ModelSpec(
    name="llmesh-ghost",
    hf_dir=find_model(default_models(), SMALL).hf_dir,
    price_input_per_1k=0,
    price_output_per_1k=0,
    context_length=256,
)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def prompts() -> list[common_pb2.ModelPrompt]:
    """The question in each model's own template and tokens, as preprocess renders them."""
    out = []
    for spec in [*default_models(), GHOST]:
        text, ids = render_chat(AutoTokenizer.from_pretrained(spec.resolved_dir()), QUESTION)
        out.append(common_pb2.ModelPrompt(model=spec.name, text=text, token_ids=ids))
    return out


async def _serve(service, settings, stub_class):
    running = await start_service(service, settings, "127.0.0.1:0")
    async with build_channel(f"127.0.0.1:{running.port}", settings) as channel:
        yield stub_class(channel), running.port
    await running.stop(None)
    await service.close()


@pytest.fixture(scope="module")
async def inference_server(triton):
    settings = InferenceSettings(
        triton_grpc_addr=triton.grpc_url,
        models=[*default_models(), GHOST],
        default_deadline_s=60,
        breaker_failure_threshold=2,
    )
    async for stub, port in _serve(InferenceService(settings), settings, inference_pb2_grpc.InferenceServiceStub):
        yield stub, port


@pytest.fixture(scope="module")
def inference(inference_server):
    return inference_server[0]


@pytest.fixture(scope="module")
async def router(triton, inference_server):
    settings = RouterSettings(
        inference_addr=f"127.0.0.1:{inference_server[1]}", default_deadline_s=60, score_timeout_s=30
    )
    async for stub, _ in _serve(RouterService(settings), settings, router_pb2_grpc.RouterServiceStub):
        yield stub


def generate_request(prompts, model=SMOL, fallbacks=(), **sampling):
    return inference_pb2.GenerateRequest(
        model=model,
        fallback_models=fallbacks,
        prompts=prompts,
        sampling=common_pb2.SamplingParams(**{"max_tokens": 16, "temperature": 0.0, **sampling}),
    )


def decode(model, token_ids):
    return AutoTokenizer.from_pretrained(find_model([*default_models(), GHOST], model).resolved_dir()).decode(
        token_ids, skip_special_tokens=True
    )


async def test_stream_carries_the_engines_tokens_and_counts(inference, prompts):
    responses = [r async for r in inference.GenerateStream(generate_request(prompts))]
    token_ids = [t for r in responses for t in r.delta.token_ids]
    logprobs = [p for r in responses for p in r.delta.token_logprobs]
    assert "Paris" in decode(SMOL, token_ids)
    assert len(logprobs) == len(token_ids) and all(math.isfinite(p) and p <= 0 for p in logprobs)
    last = responses[-1]
    assert last.delta.finish_reason == common_pb2.FINISH_REASON_STOP
    assert last.usage.completion_tokens == len(token_ids)
    smol_prompt = next(p for p in prompts if p.model == SMOL)
    assert last.usage.prompt_tokens == len(smol_prompt.token_ids)


async def test_seeded_unary_matches_stream(inference, prompts):
    request = generate_request(prompts, temperature=1.0, seed=7)
    streamed = [t async for r in inference.GenerateStream(request) for t in r.delta.token_ids]
    response = await inference.Generate(request)
    assert (response.model, list(response.choices[0].token_ids)) == (SMOL, streamed)


async def test_n_answers_and_top_logprobs(inference, prompts):
    response = await inference.Generate(generate_request(prompts, n=2, temperature=1.0, seed=3, top_logprobs=2))
    assert [c.index for c in response.choices] == [0, 1]
    for choice in response.choices:
        assert len(choice.top_logprobs) == len(choice.token_ids) > 0
        assert all(len(top.token_ids) == 2 for top in choice.top_logprobs)
    assert response.usage.completion_tokens == sum(len(c.token_ids) for c in response.choices)


async def test_fails_over_to_a_model_with_another_tokenizer(inference, prompts):
    """llmesh-ghost (4k-token vocabulary) fails on Triton; smollm2 (49k) answers with its own prompt."""
    response = await inference.Generate(generate_request(prompts, model=GHOST.name, fallbacks=[SMOL]))
    assert response.model == SMOL
    assert "Paris" in decode(SMOL, response.choices[0].token_ids)
    streamed = [
        r async for r in inference.GenerateStream(generate_request(prompts, model=GHOST.name, fallbacks=[SMOL]))
    ]
    assert {r.model for r in streamed} == {SMOL}
    assert "Paris" in decode(SMOL, [t for r in streamed for t in r.delta.token_ids])


async def test_client_errors_never_open_a_breaker(inference, prompts):
    """Requests the engine refuses as invalid are INVALID_ARGUMENT and count against no model."""
    schema = common_pb2.StructuredOutput(json_schema='{"type": "no-such-type"}')
    for _ in range(4):  # twice the breaker's threshold
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await inference.Generate(generate_request(prompts, structured_output=schema))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await inference.Generate(generate_request(prompts, max_tokens=4_294_967_295))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(raised.value).metadata["param"] == "max_tokens"
    response = await inference.Generate(generate_request(prompts))
    assert response.model == SMOL


async def test_too_long_a_prompt_is_refused_naming_the_limit(inference, prompts):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await inference.Generate(generate_request(prompts, model=SMALL, max_tokens=400))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context 256" in raised.value.details()


async def test_score_is_the_models_perplexity_of_the_prompt(inference, prompts):
    prompt = next(p for p in prompts if p.model == SMALL)
    response = await inference.Score(inference_pb2.ScoreRequest(model=SMALL, prompt_token_ids=prompt.token_ids))
    assert response.model == SMALL and len(response.token_logprobs) == len(prompt.token_ids) - 1
    assert response.perplexity == pytest.approx(math.exp(-sum(response.token_logprobs) / len(response.token_logprobs)))


async def test_router_scores_through_the_inference_service(router, prompts):
    response = await router.Route(router_pb2.RouteRequest(prompts=prompts))
    perplexity = response.signals["perplexity"]
    assert math.isfinite(perplexity) and perplexity > 1
    settings = RouterSettings()
    tiers = (settings.large_model, settings.small_model)
    assert response.model == (tiers[0] if perplexity > settings.perplexity_threshold else tiers[1])
    assert response.reason.startswith(f"perplexity {perplexity:.1f}")


async def test_unknown_model_never_reaches_triton(inference, prompts):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await inference.Generate(generate_request(prompts, model="gpt-9"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
