"""The Triton client: tensors per the contract, response checks, timeouts and trace context."""

import json
import time

import grpc
import numpy as np
import pytest
from opentelemetry import trace
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from llmesh.common.v1 import common_pb2
from mesh import deadlines, semconv
from mesh.settings import MeshSettings
from services.inference.triton_client import (
    Chunk,
    QueueFull,
    RequestRejected,
    TritonClient,
    TritonError,
    engine_parameters,
    generate_inputs,
    parse_chunk,
)


def result(raw: dict[str, bytes] | None = None, **outputs: np.ndarray) -> InferResult:
    """An InferResult as Triton would send it; ``raw`` replaces an output's bytes."""
    response = service_pb2.ModelInferResponse()
    for name, array in outputs.items():
        datatype = np_to_triton_dtype(array.dtype)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append((raw or {}).get(name, array.tobytes()))
    return InferResult(response)


def chunk_result(ids, logprobs, finish="", raw=None, *, index=0, usage=(3, 1, 0), top=((), ()), prompt=()):
    return result(
        raw,
        token_ids=np.array(ids, dtype=np.int64),
        token_logprobs=np.array(logprobs, dtype=np.float32),
        top_token_ids=np.array(top[0], dtype=np.int64),
        top_logprobs=np.array(top[1], dtype=np.float32),
        prompt_logprobs=np.array(prompt, dtype=np.float32),
        index=np.array([index], dtype=np.int32),
        finish_reason=np.frombuffer(finish.encode(), dtype=np.uint8),
        usage=np.array(usage, dtype=np.int64),
    )


def test_generate_inputs_are_token_ids_and_json_parameters():
    inputs = {t.name(): t for t in generate_inputs([5, 6, 7], {"max_tokens": 16, "stop": ["é"]})}
    assert set(inputs) == {"input_ids", "parameters"}
    assert (inputs["input_ids"].datatype(), inputs["input_ids"].shape()) == ("INT64", [3])
    assert np.frombuffer(inputs["input_ids"]._get_content(), np.int64).tolist() == [5, 6, 7]
    # UTF-8 bytes in a UINT8 tensor: nothing crosses the engine's stub through numpy strings.
    assert inputs["parameters"].datatype() == "UINT8"
    assert json.loads(inputs["parameters"]._get_content()) == {"max_tokens": 16, "stop": ["é"]}


def test_engine_parameters_send_only_what_is_set():
    assert engine_parameters(common_pb2.SamplingParams(max_tokens=4)) == {"max_tokens": 4}
    sampling = common_pb2.SamplingParams(
        max_tokens=4,
        temperature=0.0,
        top_p=0.5,
        seed=42,
        stop=["\n"],
        n=2,
        top_logprobs=3,
        presence_penalty=0.5,
        logit_bias={7: -100.0},
        structured_output=common_pb2.StructuredOutput(json_schema='{"type": "object"}'),
    )
    assert engine_parameters(sampling) == {
        "max_tokens": 4,
        "temperature": 0.0,
        "top_p": 0.5,
        "seed": 42,
        "stop": ["\n"],
        "n": 2,
        "logprobs": 3,
        "presence_penalty": 0.5,
        "logit_bias": {"7": -100.0},
        "structured_output": {"json": {"type": "object"}},
    }
    with pytest.raises(RequestRejected):
        engine_parameters(common_pb2.SamplingParams(structured_output=common_pb2.StructuredOutput(json_schema="{")))


def test_parse_chunk():
    parsed = parse_chunk(
        chunk_result([3, 4], [-0.5, -1.5], "length", index=1, usage=(9, 2, 4), top=([3, 5, 4, 6], [-0.5, -2, -1.5, -3]))
    )
    assert parsed == Chunk(
        index=1,
        token_ids=[3, 4],
        token_logprobs=[-0.5, -1.5],
        top_logprobs=[([3, 5], [-0.5, -2.0]), ([4, 6], [-1.5, -3.0])],
        finish_reason="length",
        prompt_tokens=9,
        completion_tokens=2,
        cached_tokens=4,
    )
    # The last chunk may carry no tokens at all.
    assert parse_chunk(chunk_result([], [], "stop")).finish_reason == "stop"
    assert parse_chunk(chunk_result([], [], prompt=[-1.0, -2.0])).prompt_logprobs == [-1.0, -2.0]


@pytest.mark.parametrize(
    "bad",
    [
        # What a stub sending tensors through numpy 2 sends: the right shapes, no bytes.
        chunk_result([3, 4], [-0.5, -1.5], raw={"token_ids": b"", "token_logprobs": b"", "usage": b""}),
        chunk_result([3], [-0.5], raw={"usage": b""}),
        chunk_result([3, 4], [-0.5]),
        chunk_result([3, 4], [-0.5, -1.5], top=([1, 2, 3], [-1, -2, -3])),
        result(token_ids=np.array([3], dtype=np.int64), token_logprobs=np.array([-0.5], dtype=np.float32)),
    ],
    ids=["all-empty", "empty-usage", "length-mismatch", "ragged-alternatives", "missing-output"],
)
def test_parse_chunk_rejects_malformed(bad):
    with pytest.raises(TritonError):
        parse_chunk(bad)


class FakeStream:
    def __init__(self, items):
        self.items = items
        self.cancelled = False

    async def __aiter__(self):
        for item in self.items:
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self):
        self.cancelled = True


class FakeTritonGrpc:
    """Stands in for tritonclient's aio client and records how it was called."""

    def __init__(self, items=()):
        self.items = list(items)
        self.calls = []

    def stream_infer(self, inputs_iterator, stream_timeout=None, headers=None):
        self.calls.append({"timeout": stream_timeout, "headers": headers, "inputs": inputs_iterator})
        self.stream = FakeStream(self.items)
        return self.stream


@pytest.fixture
async def client():
    triton = TritonClient(MeshSettings(default_deadline_s=7.0, stream_deadline_s=70.0))
    await triton.close()  # its real channel is replaced below
    return triton


async def collect(client, model="m", ids=(1, 2, 3), **params):
    return [chunk async for chunk in client.generate_stream(model, list(ids), {"max_tokens": 8, **params})]


async def test_generate_stream_forwards_trace_context(client, spans):
    spans.clear()
    client._client = FakeTritonGrpc(
        [(chunk_result([7], [-0.5]), None), (chunk_result([8], [-0.25], "length", usage=(3, 2, 0)), None)]
    )
    with trace.get_tracer("test").start_as_current_span("caller") as caller:
        chunks = await collect(client, temperature=0.5)
    assert [(c.token_ids, c.finish_reason) for c in chunks] == [([7], ""), ([8], "length")]

    span = next(s for s in spans.get_finished_spans() if s.name == semconv.SPAN_TRITON_GENERATE)
    assert span.parent.span_id == caller.get_span_context().span_id
    # Triton makes its InferRequest span a child of the span named in traceparent.
    traceparent = client._client.calls[0]["headers"]["traceparent"]
    assert traceparent.startswith(f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-")
    assert span.kind is trace.SpanKind.CLIENT
    attrs = span.attributes
    assert attrs[semconv.GEN_AI_REQUEST_MODEL] == "m"
    assert attrs[semconv.GEN_AI_REQUEST_TEMPERATURE] == 0.5
    assert (attrs[semconv.GEN_AI_USAGE_INPUT_TOKENS], attrs[semconv.GEN_AI_USAGE_OUTPUT_TOKENS]) == (3, 2)
    assert not client._client.stream.cancelled


async def test_a_request_llmesh_does_not_sample_sends_triton_no_traceparent(client):
    """Triton traces any request with a valid traceparent, sampled flag or not: an unsampled
    one must not reach it, or Triton records what llmesh sampled out."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    client._client = FakeTritonGrpc([(chunk_result([7], [-0.5], "stop"), None)])
    unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
    with unsampled.start_as_current_span("caller") as caller:
        assert caller.get_span_context().is_valid and not caller.get_span_context().trace_flags.sampled
        await collect(client)
    assert client._client.calls[0]["headers"] is None


async def test_abandoned_stream_is_cancelled_in_triton(client):
    client._client = FakeTritonGrpc([(chunk_result([7], [-0.5]), None), (chunk_result([8], [-0.25], "stop"), None)])
    chunks = client.generate_stream("m", [1], {"max_tokens": 8})
    await anext(chunks)
    await chunks.aclose()  # what happens when our own caller goes away
    assert client._client.stream.cancelled


async def test_generate_stream_timeout_follows_inbound_deadline(client):
    client._client = FakeTritonGrpc([(chunk_result([7], [-0.1], "stop"), None)])
    await collect(client)
    # No inbound call: the stream deadline (a generation stream lasts as long as its answer).
    assert client._client.calls[-1]["timeout"] == 70.0
    token = deadlines._inbound_deadline.set(time.monotonic() + 1.5)
    try:
        await collect(client)
    finally:
        deadlines._inbound_deadline.reset(token)
    assert 1.0 < client._client.calls[-1]["timeout"] <= 1.5


@pytest.mark.parametrize(
    "items",
    [
        [(None, InferenceServerException("model raised"))],
        [(chunk_result([7], [-0.5]), None), grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "gone")],
        [(chunk_result([7], [-0.5]), None)],
        [(chunk_result([7], [-0.5], "stop"), None)],
    ],
    ids=["error-response", "grpc-error-mid-stream", "ends-without-finish-reason", "one-of-two-answers-finished"],
)
async def test_generate_stream_failures_raise_triton_error(client, spans, items):
    spans.clear()
    client._client = FakeTritonGrpc(items)
    with pytest.raises(TritonError):
        await collect(client, n=2)
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is trace.StatusCode.ERROR


async def test_an_engine_refusal_is_the_clients_fault(client):
    message = f"[request id: <id_unknown>] {semconv.ENGINE_INVALID_REQUEST_PREFIX}prompt exceeds the context"
    client._client = FakeTritonGrpc([(None, InferenceServerException(message))])
    with pytest.raises(RequestRejected, match=r"^prompt exceeds the context$"):
        await collect(client)


@pytest.mark.parametrize(
    "item",
    [
        (None, InferenceServerException("[request id: <id_unknown>] Exceeds maximum queue size")),
        grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "Exceeds maximum queue size"),
    ],
    ids=["error-response", "grpc-error"],
)
async def test_tritons_full_queue_is_told_apart(client, item):
    client._client = FakeTritonGrpc([item])
    with pytest.raises(QueueFull, match=r"^m: .*Exceeds maximum queue size$"):
        await collect(client)


async def test_score_asks_for_prompt_logprobs_and_checks_their_count(client, spans):
    spans.clear()
    client._client = FakeTritonGrpc([(chunk_result([9], [-0.1], "length", prompt=[-1.0, -3.0]), None)])
    assert await client.score("m", [4, 5, 6]) == [-1.0, -3.0]
    (call,) = client._client.calls
    (request,) = [r async for r in call["inputs"]]
    params = json.loads(next(t for t in request["inputs"] if t.name() == "parameters")._get_content())
    assert params == {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": True}
    (span,) = spans.get_finished_spans()
    assert span.name == semconv.SPAN_TRITON_SCORE
    client._client = FakeTritonGrpc([(chunk_result([9], [-0.1], "length", prompt=[-1.0]), None)])
    with pytest.raises(TritonError):
        await client.score("m", [4, 5, 6])
