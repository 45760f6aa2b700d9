"""InferenceService's failover and breakers, called directly with a fake Triton client."""

import itertools
import time

import grpc
import pytest
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2
from prometheus_client import REGISTRY
from support.fake_triton import FakeTriton

from mesh import deadlines, semconv
from services.inference.circuit import State
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings
from services.inference.triton_client import Chunk, TritonError

SMALL, LARGE = "llmesh-small", "llmesh-large"
SETTINGS = InferenceSettings(breaker_failure_threshold=2, breaker_cooldown_s=30.0, default_max_tokens=9)


def answer(*token_ids: int, finish: str = "stop") -> list[Chunk]:
    """One chunk per token, the last one finishing."""
    *head, last = token_ids
    return [Chunk([t], [-0.5]) for t in head] + [Chunk([last], [-0.5], finish)]



class Aborted(Exception):
    pass


class FakeContext:
    async def abort_with_status(self, status):
        raise Aborted(status.code, status.details)


def request(model=LARGE, fallbacks=(SMALL,), prompt=(1, 2, 3), **sampling):
    return inference_pb2.GenerateRequest(
        model=model,
        fallback_models=fallbacks,
        prompt_token_ids=prompt,
        sampling=common_pb2.SamplingParams(**sampling),
    )


async def stream(service, req):
    return [(r.model, list(r.token_ids), r.finish_reason) async for r in service.GenerateStream(req, FakeContext())]


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
    assert [model for model, _ in triton.calls] == [LARGE, SMALL]
    assert failovers(LARGE, SMALL) == before + 1


async def test_unary_fails_over_even_mid_generation():
    triton = FakeTriton({LARGE: [Chunk([7], [-0.5]), TritonError("died")], SMALL: answer(1, 2, 3)})
    response = await InferenceService(SETTINGS, triton).Generate(request(), FakeContext())
    assert (response.model, list(response.token_ids)) == (SMALL, [1, 2, 3])
    assert response.usage == common_pb2.Usage(prompt_tokens=3, completion_tokens=3, total_tokens=6)


async def test_stream_ends_with_the_error_once_a_chunk_was_sent():
    triton = FakeTriton({LARGE: [Chunk([7], [-0.5]), TritonError("died")], SMALL: answer(1)})
    service = InferenceService(SETTINGS, triton)
    received = []
    with pytest.raises(Aborted) as raised:
        async for response in service.GenerateStream(request(), FakeContext()):
            received.append(list(response.token_ids))
    assert received == [[7]]
    assert raised.value.args[0] == grpc.StatusCode.UNAVAILABLE
    assert [model for model, _ in triton.calls] == [LARGE]


async def test_open_breaker_skips_its_model():
    triton = FakeTriton({LARGE: [TritonError("down")], SMALL: answer(1)})
    service = InferenceService(SETTINGS, triton)
    for _ in range(SETTINGS.breaker_failure_threshold):
        await stream(service, request())
    assert service.breakers[LARGE].state is State.OPEN
    triton.calls.clear()
    assert await stream(service, request()) == [(SMALL, [1], common_pb2.FINISH_REASON_STOP)]
    assert [model for model, _ in triton.calls] == [SMALL]


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
    assert "llmesh-large: oom" in details and "llmesh-small: gone" in details


@pytest.mark.parametrize(
    ("req", "code"),
    [
        (request(model="gpt-9"), grpc.StatusCode.NOT_FOUND),
        (request(fallbacks=["gpt-9"]), grpc.StatusCode.NOT_FOUND),
        (request(prompt=()), grpc.StatusCode.INVALID_ARGUMENT),
        (request(prompt=range(300)), grpc.StatusCode.INVALID_ARGUMENT),
        (request(top_p=0.0), grpc.StatusCode.INVALID_ARGUMENT),
        (request(temperature=-1.0), grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["unknown-model", "unknown-fallback", "empty-prompt", "prompt-too-long", "bad-top-p", "bad-temperature"],
)
async def test_bad_requests_never_reach_triton(req, code):
    triton = FakeTriton({LARGE: answer(1), SMALL: answer(1)})
    with pytest.raises(Aborted) as raised:
        await InferenceService(SETTINGS, triton).Generate(req, FakeContext())
    assert raised.value.args[0] == code
    assert triton.calls == []


async def test_sampling_defaults_max_tokens_and_keeps_the_rest():
    triton = FakeTriton({LARGE: answer(1), SMALL: answer(1)})
    await InferenceService(SETTINGS, triton).Generate(request(temperature=0.0, stop=["\n"]), FakeContext())
    (_, sampling), = triton.calls
    assert sampling.max_tokens == SETTINGS.default_max_tokens
    assert sampling.HasField("temperature") and sampling.temperature == 0.0
    assert not sampling.HasField("top_p")
    assert list(sampling.stop) == ["\n"]


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
    assert [model for model, _ in triton.calls] == [LARGE]  # no point trying the next one
    service.breakers[LARGE].record_failure()  # one real failure short of opening:
    assert service.breakers[LARGE].state is State.CLOSED  # the deadline one did not count
