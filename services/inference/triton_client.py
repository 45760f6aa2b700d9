"""The async Triton client shared by inference and router.

Tensors follow the contract in docs/ARCHITECTURE.md. Every call carries a timeout taken from the
inbound deadline, and runs inside a client span whose W3C ``traceparent`` is sent as gRPC
metadata, so the spans Triton records in its OpenTelemetry trace mode (``InferRequest``, the
model, ``compute``) become children of ours. For a stream, Triton reads the trace context from
the stream's own metadata, and we open one stream per request, so each request gets its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_grpc
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from llmesh.common.v1 import common_pb2
from mesh import semconv
from mesh.deadlines import remaining_s
from mesh.settings import MeshSettings
from mesh.telemetry import current_traceparent, tracer

_tracer = tracer(__name__)


class TritonError(Exception):
    """A Triton call failed: unreachable, model error, deadline, or a malformed response."""


@dataclass(frozen=True)
class Chunk:
    """One streamed response of a generation model."""

    token_ids: list[int]
    token_logprobs: list[float]
    # Empty until the last chunk, then "stop" or "length".
    finish_reason: str = ""


def _tensor(name: str, array: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def generate_inputs(prompt_ids: Sequence[int], sampling: common_pb2.SamplingParams) -> list[triton_grpc.InferInput]:
    """Input tensors of a generation model; ``sampling.max_tokens`` must already be resolved."""
    inputs = [
        _tensor("input_ids", np.asarray(prompt_ids, dtype=np.int64)),
        _tensor("max_tokens", np.array([sampling.max_tokens], dtype=np.int32)),
    ]
    # Optional inputs are sent only when set, so that the model's own defaults apply otherwise.
    if sampling.HasField("temperature"):
        inputs.append(_tensor("temperature", np.array([sampling.temperature], dtype=np.float32)))
    if sampling.HasField("top_p"):
        inputs.append(_tensor("top_p", np.array([sampling.top_p], dtype=np.float32)))
    if sampling.HasField("seed"):
        inputs.append(_tensor("seed", np.array([sampling.seed], dtype=np.int64)))
    if sampling.stop:
        inputs.append(_tensor("stop", np.array([s.encode() for s in sampling.stop], dtype=np.object_)))
    return inputs


def _output(result: triton_grpc.InferResult, name: str) -> np.ndarray:
    """A flattened output tensor whose bytes were checked against its declared shape.

    A python-backend stub that imports numpy 2 sends every output tensor empty, without any
    error (../shared/notes/triton-on-cpu.md); tritonclient then fails to reshape the empty
    buffer, and that must surface as a failed call rather than an empty answer.
    """
    try:
        array = result.as_numpy(name)
    except ValueError as error:
        raise TritonError(f"output {name!r} holds fewer bytes than its shape: {error}") from None
    if array is None:
        raise TritonError(f"response has no output {name!r}")
    return array.reshape(-1)


def parse_chunk(result: triton_grpc.InferResult) -> Chunk:
    token_ids = _output(result, "token_ids")
    logprobs = _output(result, "token_logprobs")
    finish = _output(result, "finish_reason")
    if finish.size != 1:
        raise TritonError(f"finish_reason has {finish.size} elements, expected 1")
    if token_ids.size != logprobs.size:
        raise TritonError(f"{token_ids.size} token ids but {logprobs.size} log-probs")
    reason = finish[0].decode() if isinstance(finish[0], bytes) else str(finish[0])
    if token_ids.size == 0 and not reason:
        raise TritonError("a chunk with no tokens that is not the last one")
    return Chunk(token_ids.tolist(), logprobs.tolist(), reason)


def parse_logprobs(result: triton_grpc.InferResult, prompt_len: int) -> np.ndarray:
    """The scoring model's log-probs: one per prompt token after the first."""
    logprobs = _output(result, "token_logprobs")
    expected = max(prompt_len - 1, 0)
    if logprobs.size != expected:
        raise TritonError(f"scoring returned {logprobs.size} log-probs for {prompt_len} tokens")
    return logprobs


@contextmanager
def _client_span(name: str, attributes: Mapping[str, object]) -> Iterator[tuple[Span, dict[str, str] | None]]:
    """A client span and the gRPC metadata that makes Triton's spans its children.

    The span is not made current for the whole block: inside a streaming generator it would
    stay current in the consumer's context between chunks and adopt the consumer's spans.
    """
    span = _tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    with trace.use_span(span, end_on_exit=False):
        traceparent = current_traceparent()
    try:
        yield span, ({"traceparent": traceparent} if traceparent else None)
    except BaseException as error:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, str(error)))
        raise
    finally:
        span.end()


async def _single(request: dict) -> AsyncIterator[dict]:
    # Ending the request stream after one request half-closes it; Triton then closes the
    # response stream once the last response of that request was sent.
    yield request


class TritonClient:
    def __init__(self, settings: MeshSettings) -> None:
        self.settings = settings
        # tritonclient's channel options, not the mesh's: Triton's gRPC server counts pings
        # less than 5 min apart on an idle connection as strikes and sends GOAWAY after two,
        # so the mesh's 30 s keepalive would keep breaking the connection.
        self._client = triton_grpc.InferenceServerClient(settings.triton_grpc_addr)

    def _timeout(self) -> float:
        """Seconds this call may take: what is left of the inbound deadline, else the default."""
        remaining = remaining_s()
        return self.settings.default_deadline_s if remaining is None else max(remaining, 0.0)

    async def generate_stream(
        self, model: str, prompt_ids: Sequence[int], sampling: common_pb2.SamplingParams
    ) -> AsyncIterator[Chunk]:
        """Stream a decoupled generation model's chunks; the last one carries the finish_reason."""
        attributes = {
            semconv.GEN_AI_SYSTEM: semconv.GEN_AI_SYSTEM_VALUE,
            semconv.GEN_AI_OPERATION_NAME: "text_completion",
            semconv.GEN_AI_REQUEST_MODEL: model,
            semconv.GEN_AI_REQUEST_MAX_TOKENS: sampling.max_tokens,
            semconv.GEN_AI_USAGE_INPUT_TOKENS: len(prompt_ids),
        }
        if sampling.HasField("temperature"):
            attributes[semconv.GEN_AI_REQUEST_TEMPERATURE] = sampling.temperature
        if sampling.HasField("top_p"):
            attributes[semconv.GEN_AI_REQUEST_TOP_P] = sampling.top_p
        request = {"model_name": model, "inputs": generate_inputs(prompt_ids, sampling)}
        with _client_span(semconv.SPAN_TRITON_GENERATE, attributes) as (span, headers):
            responses = self._client.stream_infer(_single(request), stream_timeout=self._timeout(), headers=headers)
            completion_tokens, finish_reason, completed = 0, "", False
            try:
                async for result, error in responses:
                    if error is not None:
                        raise TritonError(f"{model}: {error.message()}")
                    chunk = parse_chunk(result)
                    completion_tokens += len(chunk.token_ids)
                    finish_reason = chunk.finish_reason or finish_reason
                    span.set_attribute(semconv.GEN_AI_USAGE_OUTPUT_TOKENS, completion_tokens)
                    yield chunk
                if not finish_reason:
                    raise TritonError(f"{model}: stream ended without a finish_reason")
                completed = True
                span.set_attribute(semconv.GEN_AI_RESPONSE_MODEL, model)
                span.set_attribute(semconv.GEN_AI_RESPONSE_FINISH_REASONS, [finish_reason])
            except grpc.RpcError as error:
                # Errors while reading the stream arrive as raw gRPC errors, not tritonclient's.
                raise TritonError(f"{model}: {error.code().name}: {error.details()}") from None
            except InferenceServerException as error:
                raise TritonError(f"{model}: {error.message()}") from None
            finally:
                if not completed:
                    # Stops generation in Triton when our caller went away or the stream broke.
                    responses.cancel()

    async def score(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Log-probabilities of prompt tokens 1..n-1 under the scoring model."""
        model = self.settings.scoring_model
        attributes = {
            semconv.GEN_AI_SYSTEM: semconv.GEN_AI_SYSTEM_VALUE,
            semconv.GEN_AI_REQUEST_MODEL: model,
            semconv.GEN_AI_USAGE_INPUT_TOKENS: len(prompt_ids),
        }
        # The scoring model batches (max_batch_size > 0), so the input has a batch dimension.
        ids = np.asarray(prompt_ids, dtype=np.int64).reshape(1, -1)
        with _client_span(semconv.SPAN_TRITON_SCORE, attributes) as (_, headers):
            try:
                result = await self._client.infer(
                    model, [_tensor("input_ids", ids)], client_timeout=self._timeout(), headers=headers
                )
            except InferenceServerException as error:
                raise TritonError(f"{model}: {error.message()}") from None
            return parse_logprobs(result, len(prompt_ids))

    async def model_ready(self, name: str) -> bool:
        """False also when Triton cannot be reached: readiness must not raise."""
        try:
            return await self._client.is_model_ready(name, client_timeout=self._timeout())
        except InferenceServerException:
            return False

    async def close(self) -> None:
        await self._client.close()
