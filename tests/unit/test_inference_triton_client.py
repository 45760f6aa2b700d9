"""The Triton client: tensors per the contract, response checks, timeouts and trace context."""

import time

import grpc
import numpy as np
import pytest
from opentelemetry import trace
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.utils import (
    InferenceServerException,
    deserialize_bytes_tensor,
    np_to_triton_dtype,
    serialize_byte_tensor,
)

from llmesh.common.v1 import common_pb2
from mesh import deadlines, semconv
from mesh.settings import MeshSettings
from services.inference.triton_client import (
    Chunk,
    TritonClient,
    TritonError,
    generate_inputs,
    parse_chunk,
    parse_logprobs,
)




def result(raw: dict[str, bytes] | None = None, **outputs: np.ndarray) -> InferResult:
    """An InferResult as Triton would send it; ``raw`` replaces an output's bytes."""
    response = service_pb2.ModelInferResponse()
    for name, array in outputs.items():
        datatype = np_to_triton_dtype(array.dtype)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        data = serialize_byte_tensor(array).item() if datatype == "BYTES" else array.tobytes()
        response.raw_output_contents.append((raw or {}).get(name, data))
    return InferResult(response)


def chunk_result(ids, logprobs, finish="", raw=None) -> InferResult:
    return result(
        raw,
        token_ids=np.array(ids, dtype=np.int64),
        token_logprobs=np.array(logprobs, dtype=np.float32),
        finish_reason=np.array([finish.encode()], dtype=np.object_),
    )


def tensors(inputs):
    return {t.name(): t for t in inputs}


def test_generate_inputs_required_only():
    inputs = tensors(generate_inputs([5, 6, 7], common_pb2.SamplingParams(max_tokens=16)))
    assert set(inputs) == {"input_ids", "max_tokens"}
    assert (inputs["input_ids"].datatype(), inputs["input_ids"].shape()) == ("INT64", [3])
    assert np.frombuffer(inputs["input_ids"]._get_content(), np.int64).tolist() == [5, 6, 7]
    assert (inputs["max_tokens"].datatype(), inputs["max_tokens"].shape()) == ("INT32", [1])
    assert np.frombuffer(inputs["max_tokens"]._get_content(), np.int32).tolist() == [16]


def test_generate_inputs_optional_when_set():
    sampling = common_pb2.SamplingParams(max_tokens=4, temperature=0.0, top_p=0.9, seed=42, stop=["\n", "END"])
    inputs = tensors(generate_inputs([1], sampling))
    # temperature 0 (greedy) is set, so it is sent.
    assert np.frombuffer(inputs["temperature"]._get_content(), np.float32).tolist() == [0.0]
    assert inputs["top_p"].datatype() == "FP32"
    assert np.frombuffer(inputs["top_p"]._get_content(), np.float32)[0] == pytest.approx(0.9)
    assert np.frombuffer(inputs["seed"]._get_content(), np.int64).tolist() == [42]
    assert (inputs["stop"].datatype(), inputs["stop"].shape()) == ("BYTES", [2])
    assert deserialize_bytes_tensor(inputs["stop"]._get_content()).tolist() == [b"\n", b"END"]


def test_parse_chunk():
    assert parse_chunk(chunk_result([3, 4], [-0.5, -1.5])) == Chunk([3, 4], [-0.5, -1.5], "")
    # The last chunk may carry no tokens at all (max_tokens 0, or a stop string held back).
    assert parse_chunk(chunk_result([], [], "stop")) == Chunk([], [], "stop")


@pytest.mark.parametrize(
    "bad",
    [
        # What a stub running numpy 2 sends: the right shapes, no bytes.
        chunk_result([3, 4], [-0.5, -1.5], raw={"token_ids": b"", "token_logprobs": b"", "finish_reason": b""}),
        chunk_result([3], [-0.5], raw={"finish_reason": b""}),
        chunk_result([3, 4], [-0.5]),
        chunk_result([], []),
        result(token_ids=np.array([3], dtype=np.int64), token_logprobs=np.array([-0.5], dtype=np.float32)),
    ],
    ids=["all-empty", "empty-finish-reason", "length-mismatch", "no-tokens-not-last", "missing-output"],
)
def test_parse_chunk_rejects_malformed(bad):
    with pytest.raises(TritonError):
        parse_chunk(bad)


def test_parse_logprobs_checks_count():
    lp = np.array([[-1.0, -2.0]], dtype=np.float32)
    assert parse_logprobs(result(token_logprobs=lp), 3).tolist() == [-1.0, -2.0]
    with pytest.raises(TritonError):
        parse_logprobs(result(token_logprobs=lp, raw={"token_logprobs": b""}), 3)
    with pytest.raises(TritonError):
        parse_logprobs(result(token_logprobs=lp), 5)


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

    def __init__(self, items=(), infer_result=None):
        self.items = list(items)
        self.infer_result = infer_result
        self.calls = []

    def stream_infer(self, inputs_iterator, stream_timeout=None, headers=None):
        self.calls.append({"timeout": stream_timeout, "headers": headers})
        self.stream = FakeStream(self.items)
        return self.stream

    async def infer(self, model_name, inputs, client_timeout=None, headers=None):
        self.calls.append({"model": model_name, "inputs": inputs, "timeout": client_timeout, "headers": headers})
        if isinstance(self.infer_result, Exception):
            raise self.infer_result
        return self.infer_result


@pytest.fixture
async def client():
    triton = TritonClient(MeshSettings(default_deadline_s=7.0, scoring_model="scorer"))
    await triton.close()  # its real channel is replaced below
    return triton


async def collect(client, model="m", ids=(1, 2, 3), **sampling):
    params = common_pb2.SamplingParams(max_tokens=8, **sampling)
    return [chunk async for chunk in client.generate_stream(model, list(ids), params)]


async def test_generate_stream_forwards_trace_context(client, spans):
    spans.clear()
    client._client = FakeTritonGrpc([(chunk_result([7], [-0.5]), None), (chunk_result([8], [-0.25], "length"), None)])
    with trace.get_tracer("test").start_as_current_span("caller") as caller:
        chunks = await collect(client, temperature=0.5)
    assert chunks == [Chunk([7], [-0.5]), Chunk([8], [-0.25], "length")]

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
    assert attrs[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("length",)
    assert not client._client.stream.cancelled


async def test_abandoned_stream_is_cancelled_in_triton(client):
    client._client = FakeTritonGrpc([(chunk_result([7], [-0.5]), None), (chunk_result([8], [-0.25], "stop"), None)])
    chunks = client.generate_stream("m", [1], common_pb2.SamplingParams(max_tokens=8))
    await anext(chunks)
    await chunks.aclose()  # what happens when our own caller goes away
    assert client._client.stream.cancelled


async def test_generate_stream_timeout_follows_inbound_deadline(client):
    client._client = FakeTritonGrpc([(chunk_result([7], [-0.1], "stop"), None)])
    await collect(client)
    assert client._client.calls[-1]["timeout"] == 7.0  # no inbound call: the default deadline
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
    ],
    ids=["error-response", "grpc-error-mid-stream", "ends-without-finish-reason"],
)
async def test_generate_stream_failures_raise_triton_error(client, spans, items):
    spans.clear()
    client._client = FakeTritonGrpc(items)
    with pytest.raises(TritonError):
        await collect(client)
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is trace.StatusCode.ERROR


async def test_score_sends_a_batch_of_one(client, spans):
    spans.clear()
    client._client = FakeTritonGrpc(infer_result=result(token_logprobs=np.array([[-1.0, -3.0]], dtype=np.float32)))
    assert (await client.score([4, 5, 6])).tolist() == [-1.0, -3.0]
    call = client._client.calls[0]
    (tensor,) = call["inputs"]
    assert (call["model"], tensor.name(), tensor.shape()) == ("scorer", "input_ids", [1, 3])
    (span,) = spans.get_finished_spans()
    assert span.name == semconv.SPAN_TRITON_SCORE
    assert call["headers"]["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"


async def test_score_failure_raises_triton_error(client):
    client._client = FakeTritonGrpc(infer_result=InferenceServerException("unavailable"))
    with pytest.raises(TritonError):
        await client.score([4, 5, 6])
