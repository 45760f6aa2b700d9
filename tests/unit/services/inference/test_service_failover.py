"""InferenceService's failover and breakers, called directly with a fake Triton client."""

import itertools
import time

import grpc
import pytest
from prometheus_client import REGISTRY

from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2
from mesh import deadlines, semconv
from services.inference.circuit import State
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings
from services.inference.triton_client import Chunk, RequestRejected, TritonError
from support.fake_triton import FakeTriton, answer

SMALL, LARGE = "llmesh-small", "smollm2-135m-instruct"
SETTINGS = InferenceSettings(breaker_failure_threshold=2, breaker_cooldown_s=30.0, default_max_tokens=9)


class Aborted(Exception):
    pass


class FakeContext:
    async def abort_with_status(self, status):
        raise Aborted(status.code, status.details)


def request(model=LARGE, fallbacks=(SMALL,), prompt=(1, 2, 3), small_prompt=(9, 8, 7, 6), **sampling):
    """Each model has its own tokens for the same prompt (their vocabularies differ)."""
    prompts = {LARGE: prompt, SMALL: small_prompt}
    return inference_pb2.GenerateRequest(
        model=model,
        fallback_models=fallbacks,
        prompts=[common_pb2.ModelPrompt(model=name, token_ids=ids) for name, ids in prompts.items()],
        sampling=common_pb2.SamplingParams(**sampling),
    )


async def stream(service, req):
    return [
        (r.model, list(r.delta.token_ids), r.delta.finish_reason)
        async for r in service.GenerateStream(req, FakeContext())
    ]


def failovers(from_model, to_model) -> float:
    labels = {"from_model": from_model, "to_model": to_model}
    return REGISTRY.get_sample_value(semconv.METRIC_INFERENCE_FAILOVERS, labels) or 0.0


async def test_stream_fails_over_before_its_first_chunk():
    triton = FakeTriton({LARGE: [TritonError("down")], SMALL: answer(1, 2)})
    service = InferenceService(SETTINGS, triton)
    before = failovers(LARGE, SMALL)
    assert await stream(service, request()) == [
        (SMALL, [1], common_pb2.FINISH_REASON_UNSPECIFIED),
        (SMALL, [2], common_pb2.FINISH_REASON_STOP),
    ]
    # The fallback gets its own tokens, not the failed model's.
    assert [(model, ids) for model, ids, _ in triton.calls] == [(LARGE, [1, 2, 3]), (SMALL, [9, 8, 7, 6])]
    assert failovers(LARGE, SMALL) == before + 1


async def test_unary_fails_over_even_mid_generation():
    triton = FakeTriton({LARGE: [Chunk(0, [7], [-0.5]), TritonError("died")], SMALL: answer(1, 2, 3, prompt_tokens=4)})
    response = await InferenceService(SETTINGS, triton).Generate(request(), FakeContext())
    assert (response.model, list(response.choices[0].token_ids)) == (SMALL, [1, 2, 3])
    # The engine's own counts, of the model that answered.
    assert response.usage == common_pb2.Usage(prompt_tokens=4, completion_tokens=3, total_tokens=7)


async def test_stream_ends_with_the_error_once_a_chunk_was_sent():
    triton = FakeTriton({LARGE: [Chunk(0, [7], [-0.5]), Chunk(0, [8], [-0.5]), TritonError("died")], SMALL: answer(1)})
    service = InferenceService(SETTINGS, triton)
    received = []
    with pytest.raises(Aborted) as raised:
        async for response in service.GenerateStream(request(), FakeContext()):
            received.append(list(response.delta.token_ids))
    assert received == [[7], [8]]
    assert raised.value.args[0] == grpc.StatusCode.UNAVAILABLE
    assert [model for model, _, _ in triton.calls] == [LARGE]


async def test_open_breaker_skips_its_model():
    triton = FakeTriton({LARGE: [TritonError("down")], SMALL: answer(1)})
    service = InferenceService(SETTINGS, triton)
    for _ in range(SETTINGS.breaker_failure_threshold):
        await stream(service, request())
    assert service.breakers[LARGE].state is State.OPEN
    triton.calls.clear()
    assert await stream(service, request()) == [(SMALL, [1], common_pb2.FINISH_REASON_STOP)]
    assert [model for model, _, _ in triton.calls] == [SMALL]


async def test_slow_first_token_opens_breaker():
    settings = InferenceSettings(breaker_slow_ttft_s=0.5, breaker_slow_threshold=1)
    # Every reading of this clock is a second after the last, so every first token is slow.
    service = InferenceService(settings, FakeTriton({LARGE: answer(1), SMALL: answer(2)}), itertools.count().__next__)
    assert (await stream(service, request()))[0][0] == LARGE  # slow, but it answered
    assert service.breakers[LARGE].state is State.OPEN
    assert (await stream(service, request()))[0][0] == SMALL


async def test_every_model_failing_is_unavailable():
    triton = FakeTriton({LARGE: [TritonError("oom")], SMALL: [TritonError("gone")]})
    with pytest.raises(Aborted) as raised:
        await InferenceService(SETTINGS, triton).Generate(request(), FakeContext())
    code, details = raised.value.args
    assert code == grpc.StatusCode.UNAVAILABLE
    assert f"{LARGE}: oom" in details and "llmesh-small: gone" in details


@pytest.mark.parametrize(
    ("req", "code"),
    [
        (request(model="gpt-9"), grpc.StatusCode.NOT_FOUND),
        (request(fallbacks=["gpt-9"]), grpc.StatusCode.NOT_FOUND),
        (request(prompt=()), grpc.StatusCode.INVALID_ARGUMENT),
        (request(prompt=range(3000)), grpc.StatusCode.INVALID_ARGUMENT),
        (request(prompt=range(2000), max_tokens=100), grpc.StatusCode.INVALID_ARGUMENT),
        (request(max_tokens=4_294_967_295), grpc.StatusCode.INVALID_ARGUMENT),
        (request(top_p=0.0), grpc.StatusCode.INVALID_ARGUMENT),
        (request(temperature=-1.0), grpc.StatusCode.INVALID_ARGUMENT),
        (request(temperature=float("nan")), grpc.StatusCode.INVALID_ARGUMENT),
        (request(n=9), grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=[
        "unknown-model",
        "unknown-fallback",
        "empty-prompt",
        "prompt-too-long",
        "no-room-for-max-tokens",
        "max-tokens-beyond-32-bits",
        "bad-top-p",
        "bad-temperature",
        "nan-temperature",
        "too-many-answers",
    ],
)
async def test_bad_requests_never_reach_triton(req, code):
    triton = FakeTriton({LARGE: answer(1), SMALL: answer(1)})
    with pytest.raises(Aborted) as raised:
        await InferenceService(SETTINGS, triton).Generate(req, FakeContext())
    assert raised.value.args[0] == code
    assert triton.calls == []


async def test_sampling_defaults_max_tokens_and_sends_only_what_is_set():
    triton = FakeTriton({LARGE: answer(1), SMALL: answer(1)})
    await InferenceService(SETTINGS, triton).Generate(request(temperature=0.0, stop=["\n"]), FakeContext())
    ((_, _, params),) = triton.calls
    assert params == {"max_tokens": SETTINGS.default_max_tokens, "temperature": 0.0, "stop": ["\n"]}


async def test_a_fallback_too_small_for_the_request_is_left_out():
    """A fallback whose context cannot hold the request is skipped: no call, no failure."""
    triton = FakeTriton({LARGE: [TritonError("down")], SMALL: answer(1)})
    service = InferenceService(SETTINGS, triton)
    with pytest.raises(Aborted) as raised:
        await service.Generate(request(max_tokens=1000), FakeContext())  # llmesh-small holds 256
    assert raised.value.args[0] == grpc.StatusCode.UNAVAILABLE
    assert [model for model, _, _ in triton.calls] == [LARGE]
    assert service.breakers[SMALL].state is State.CLOSED


async def test_a_request_the_engine_rejects_counts_against_no_model():
    triton = FakeTriton({LARGE: [RequestRejected("Grammar error")], SMALL: answer(1)})
    service = InferenceService(SETTINGS, triton)
    for _ in range(SETTINGS.breaker_failure_threshold + 1):
        with pytest.raises(Aborted) as raised:
            await service.Generate(request(), FakeContext())
        assert raised.value.args[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert service.breakers[LARGE].state is State.CLOSED
    assert [model for model, _, _ in triton.calls] == [LARGE] * 3  # never failed over


async def test_score_goes_through_the_models_breaker():
    triton = FakeTriton({}, logprobs={SMALL: TritonError("down")})
    service = InferenceService(SETTINGS, triton)
    score = inference_pb2.ScoreRequest(model=SMALL, prompt_token_ids=[1, 2, 3])
    for _ in range(SETTINGS.breaker_failure_threshold):
        with pytest.raises(Aborted) as raised:
            await service.Score(score, FakeContext())
        assert raised.value.args[0] == grpc.StatusCode.UNAVAILABLE
    assert service.breakers[SMALL].state is State.OPEN
    triton.logprobs[SMALL] = [-1.0, -3.0]
    with pytest.raises(Aborted) as raised:  # open: refused without a call
        await service.Score(score, FakeContext())
    assert "circuit open" in raised.value.args[1]


async def test_score_reports_perplexity():
    triton = FakeTriton({}, logprobs={SMALL: [-1.0, -3.0]})
    response = await InferenceService(SETTINGS, triton).Score(
        inference_pb2.ScoreRequest(model=SMALL, prompt_token_ids=[1, 2, 3]), FakeContext()
    )
    assert response.perplexity == pytest.approx(2.718281828**2.0)


async def test_error_past_the_callers_deadline_is_not_the_models_fault():
    triton = FakeTriton({LARGE: [TritonError("DEADLINE_EXCEEDED")], SMALL: answer(1)})
    service = InferenceService(SETTINGS, triton)
    token = deadlines._inbound_deadline.set(time.monotonic() - 0.01)
    try:
        with pytest.raises(Aborted) as raised:
            await service.Generate(request(), FakeContext())
    finally:
        deadlines._inbound_deadline.reset(token)
    assert raised.value.args[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert [model for model, _, _ in triton.calls] == [LARGE]  # no point trying the next one
    service.breakers[LARGE].record_failure()  # one real failure short of opening:
    assert service.breakers[LARGE].state is State.CLOSED  # the deadline one did not count
