"""Per-model admission in the inference service: limits and their per-model override, failover to
the next model of the chain when a model is full, the OVERLOADED refusal, and no breaker count."""

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import REGISTRY

from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2
from mesh import semconv
from mesh.settings import load_settings
from mesh.shedding import BATCH, INTERACTIVE, set_priority
from services.inference.admission import QUEUE_FULL, TRITON_QUEUE_FULL, ModelAdmissions, ModelFull
from services.inference.circuit import State
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings
from services.inference.triton_client import QueueFull, TritonError
from support.fake_triton import FakeTriton, answer

SMALL, LARGE = "llmesh-small", "smollm2-135m-instruct"


class Aborted(Exception):
    """The status a handler aborted with, and its ErrorInfo."""

    def __init__(self, status):
        super().__init__(status.code, status.details)
        self.code = status.code
        self.info = error_details_pb2.ErrorInfo()
        for key, value in status.trailing_metadata:
            if key == "grpc-status-details-bin":
                status_pb2.Status.FromString(value).details[0].Unpack(self.info)


class FakeContext:
    async def abort_with_status(self, status):
        raise Aborted(status)


def settings(**overrides) -> InferenceSettings:
    return InferenceSettings(breaker_failure_threshold=2, default_max_tokens=9, **overrides)


def request(model=LARGE, fallbacks=(SMALL,)):
    prompts = {LARGE: (1, 2, 3), SMALL: (9, 8, 7)}
    return inference_pb2.GenerateRequest(
        model=model,
        fallback_models=fallbacks,
        prompts=[common_pb2.ModelPrompt(model=name, token_ids=ids) for name, ids in prompts.items()],
    )


def refusals(model, reason, priority=INTERACTIVE) -> float:
    labels = {"model": model, "reason": reason, "priority": priority}
    return REGISTRY.get_sample_value(semconv.METRIC_INFERENCE_MODEL_REFUSALS, labels) or 0.0


def gauge(name, model) -> float | None:
    return REGISTRY.get_sample_value(name, {"model": model})


async def started(triton, calls):
    """Until Triton has seen ``calls`` calls (each held in its script)."""
    for _ in range(200):
        if len(triton.calls) >= calls:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{len(triton.calls)} calls, expected {calls}")


def test_limits_default_and_per_model_override(monkeypatch):
    assert settings().model_limit(LARGE) == (64, 64)
    monkeypatch.setenv("LLMESH_MODEL_MAX_CONCURRENT_REQUESTS", "8")
    monkeypatch.setenv(
        "LLMESH_MODEL_LIMITS",
        '{"llmesh-small": {"max_concurrent": 2, "max_queued": 0}, "smollm2-135m-instruct": {"max_queued": 5}}',
    )
    loaded = load_settings(InferenceSettings)
    assert loaded.model_limit(SMALL) == (2, 0)
    # What an override leaves out keeps the default.
    assert loaded.model_limit(LARGE) == (8, 5)
    assert loaded.model_limit("smollm2-student") == (8, 64)


def test_limits_of_a_model_not_served_fail_at_start(monkeypatch, capsys):
    monkeypatch.setenv("LLMESH_MODEL_LIMITS", '{"gpt-5": {"max_concurrent": 1}}')
    with pytest.raises(SystemExit) as raised:
        load_settings(InferenceSettings)
    assert "LLMESH_MODEL_LIMITS names models that are not served: gpt-5" in str(raised.value)
    monkeypatch.setenv("LLMESH_MODEL_LIMITS", '{"llmesh-small": {"max_concurent": 1}}')
    with pytest.raises(SystemExit) as raised:
        load_settings(InferenceSettings)
    assert "LLMESH_MODEL_LIMITS" in str(raised.value)


async def test_a_full_model_queues_then_refuses_and_interactive_goes_first():
    admissions = ModelAdmissions([(SMALL, 1, 2)])
    order = []

    async def hold(priority, name, release):
        set_priority(priority)
        async with admissions.slot(SMALL):
            order.append(name)
            await release.wait()

    first, rest = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(hold(INTERACTIVE, "running", first))
    await asyncio.sleep(0)
    batch = asyncio.create_task(hold(BATCH, "batch", rest))
    await asyncio.sleep(0)
    interactive = asyncio.create_task(hold(INTERACTIVE, "interactive", rest))
    await asyncio.sleep(0)
    assert (
        gauge(semconv.METRIC_INFERENCE_MODEL_IN_FLIGHT, SMALL),
        gauge(semconv.METRIC_INFERENCE_MODEL_QUEUED, SMALL),
    ) == (1, 2)
    before = refusals(SMALL, QUEUE_FULL, BATCH)
    set_priority(BATCH)
    with pytest.raises(ModelFull) as raised:
        async with admissions.slot(SMALL):
            pass
    assert (raised.value.model, raised.value.reason) == (SMALL, QUEUE_FULL)
    assert refusals(SMALL, QUEUE_FULL, BATCH) == before + 1
    first.set()
    rest.set()
    await asyncio.gather(running, batch, interactive)
    # The interactive request waited behind the batch one and was still admitted first.
    assert order == ["running", "interactive", "batch"]
    assert gauge(semconv.METRIC_INFERENCE_MODEL_IN_FLIGHT, SMALL) == 0


async def test_a_full_model_hands_the_request_to_the_next_in_its_chain():
    hold = asyncio.Event()
    triton = FakeTriton({LARGE: [hold, *answer(5)], SMALL: answer(1, 2)})
    service = InferenceService(settings(model_limits={LARGE: {"max_concurrent": 1, "max_queued": 0}}), triton)
    busy = asyncio.create_task(service.Generate(request(), FakeContext()))
    await started(triton, 1)
    before = refusals(LARGE, QUEUE_FULL)
    response = await service.Generate(request(), FakeContext())
    assert (response.model, list(response.choices[0].token_ids)) == (SMALL, [1, 2])
    # The full model was never called for it: its one slot is still the first request's.
    assert [model for model, _, _ in triton.calls] == [LARGE, SMALL]
    assert refusals(LARGE, QUEUE_FULL) == before + 1
    hold.set()
    assert (await busy).model == LARGE
    assert service.breakers[LARGE].state is State.CLOSED


async def test_no_model_with_room_is_refused_overloaded():
    hold = asyncio.Event()
    triton = FakeTriton({LARGE: [hold, *answer(5)], SMALL: answer(1)})
    service = InferenceService(settings(model_limits={LARGE: {"max_concurrent": 1, "max_queued": 0}}), triton)
    busy = asyncio.create_task(service.Generate(request(fallbacks=()), FakeContext()))
    await started(triton, 1)
    with pytest.raises(Aborted) as raised:
        await service.Generate(request(fallbacks=()), FakeContext())
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.info.reason == "OVERLOADED"
    assert dict(raised.value.info.metadata) == {"retry_after": "1", LARGE: QUEUE_FULL}
    hold.set()
    await busy


async def test_a_stream_holds_its_slot_to_its_end():
    between = asyncio.Event()
    triton = FakeTriton({SMALL: [answer(1, 2)[0], between, answer(1, 2)[1]]})
    service = InferenceService(settings(model_limits={SMALL: {"max_concurrent": 1, "max_queued": 0}}), triton)
    stream = service.GenerateStream(request(model=SMALL, fallbacks=()), FakeContext())
    first = await anext(stream)
    assert list(first.delta.token_ids) == [1]
    # Its first chunk was sent; the stream still runs, and holds the model's one slot.
    with pytest.raises(Aborted) as raised:
        await service.Generate(request(model=SMALL, fallbacks=()), FakeContext())
    assert raised.value.info.reason == "OVERLOADED"
    between.set()
    assert [list(r.delta.token_ids) async for r in stream] == [[2]]
    assert gauge(semconv.METRIC_INFERENCE_MODEL_IN_FLIGHT, SMALL) == 0


async def test_tritons_full_queue_fails_over_and_never_opens_the_breaker():
    full = QueueFull(f"{LARGE}: UNAVAILABLE: Exceeds maximum queue size")
    triton = FakeTriton({LARGE: [full], SMALL: answer(1)})
    service = InferenceService(settings(), triton)
    before = refusals(LARGE, TRITON_QUEUE_FULL)
    for _ in range(5):  # more than the breaker's failure threshold (2)
        assert (await service.Generate(request(), FakeContext())).model == SMALL
    assert refusals(LARGE, TRITON_QUEUE_FULL) == before + 5
    assert service.breakers[LARGE].state is State.CLOSED
    # A real failure still counts.
    triton.scripts[LARGE] = [TritonError("down")]
    for _ in range(2):
        await service.Generate(request(), FakeContext())
    assert service.breakers[LARGE].state is State.OPEN


async def test_tritons_full_queue_alone_is_refused_overloaded():
    triton = FakeTriton({LARGE: [QueueFull("Exceeds maximum queue size")]})
    service = InferenceService(settings(), triton)
    for _ in range(3):
        with pytest.raises(Aborted) as raised:
            await service.Generate(request(fallbacks=()), FakeContext())
        assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert raised.value.info.reason == "OVERLOADED"
        assert raised.value.info.metadata[LARGE] == TRITON_QUEUE_FULL
    assert service.breakers[LARGE].state is State.CLOSED


async def test_score_is_admitted_per_model_too():
    triton = FakeTriton({}, logprobs={SMALL: QueueFull("Exceeds maximum queue size")})
    service = InferenceService(settings(), triton)
    for _ in range(3):
        with pytest.raises(Aborted) as raised:
            await service.Score(inference_pb2.ScoreRequest(model=SMALL, prompt_token_ids=[1, 2, 3]), FakeContext())
        assert raised.value.info.reason == "OVERLOADED"
    assert service.breakers[SMALL].state is State.CLOSED
