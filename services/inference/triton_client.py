"""The inference service's async client of Triton: the only code that talks to Triton.

Tensors follow the contract in docs/ARCHITECTURE.md. Every call carries a timeout taken from the
inbound deadline, and runs inside a client span whose W3C ``traceparent`` is sent as gRPC
metadata, so the spans Triton records in its OpenTelemetry trace mode (``InferRequest``, the
model, ``compute``) become children of ours. For a stream, Triton reads the trace context from
the stream's own metadata, and we open one stream per request, so each request gets its own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

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


class RequestRejected(TritonError):
    """The engine refused the request as invalid (too long, an impossible JSON schema...): the
    client's fault, which says nothing about the model's health."""


class QueueFull(TritonError):
    """Triton's queue of the model (its config's ``max_queue_size``) was full: the model is at
    capacity, which says nothing about its health either."""


# What Triton's scheduler answers (UNAVAILABLE) when a model's queue holds max_queue_size requests.
QUEUE_FULL_MESSAGE = "Exceeds maximum queue size"


@dataclass(frozen=True)
class Chunk:
    """One streamed response of an engine model: new tokens of one answer."""

    index: int
    token_ids: list[int]
    token_logprobs: list[float]
    # Per token, its `top_logprobs` most likely alternatives: (token ids, log-probs).
    top_logprobs: list[tuple[list[int], list[float]]] = field(default_factory=list)
    # Empty until this answer's last chunk, then "stop", "length" or "abort".
    finish_reason: str = ""
    # The engine's counts so far: prompt tokens, this answer's completion tokens, cached tokens.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    # Only on a request that asked for them, in its first chunk.
    prompt_logprobs: list[float] = field(default_factory=list)


def _tensor(name: str, array: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def engine_parameters(sampling: common_pb2.SamplingParams) -> dict[str, Any]:
    """The engine's JSON parameters for ``sampling``; ``max_tokens`` must already be resolved.

    Only what is set is sent, so that the engine's defaults apply otherwise.
    """
    params: dict[str, Any] = {"max_tokens": sampling.max_tokens}
    for name in ("temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty"):
        if sampling.HasField(name):
            params[name] = getattr(sampling, name)
    if sampling.stop:
        params["stop"] = list(sampling.stop)
    if sampling.n > 1:
        params["n"] = sampling.n
    if sampling.top_logprobs:
        params["logprobs"] = sampling.top_logprobs
    if sampling.logit_bias:
        params["logit_bias"] = {str(token): bias for token, bias in sampling.logit_bias.items()}
    structured = sampling.structured_output.WhichOneof("format")
    if structured == "json_schema":
        try:
            schema = json.loads(sampling.structured_output.json_schema)
        except json.JSONDecodeError as error:
            raise RequestRejected(f"structured_output.json_schema is not JSON: {error}") from None
        params["structured_output"] = {"json": schema}
    elif structured == "json_object":
        params["structured_output"] = {"json_object": True}
    elif structured == "regex":
        params["structured_output"] = {"regex": sampling.structured_output.regex}
    return params


def generate_inputs(prompt_ids: Sequence[int], params: Mapping[str, Any]) -> list[triton_grpc.InferInput]:
    encoded = json.dumps(params, separators=(",", ":")).encode()
    return [
        _tensor("input_ids", np.asarray(prompt_ids, dtype=np.int64)),
        _tensor("parameters", np.frombuffer(encoded, dtype=np.uint8)),
    ]


def _output(result: triton_grpc.InferResult, name: str) -> np.ndarray:
    """A flattened output tensor whose bytes were checked against its declared shape.

    A python-backend stub that sends a tensor through numpy 2 sends it empty, without any error
    (docs/ARCHITECTURE.md); tritonclient then fails to reshape the empty buffer, and that must
    surface as a failed call rather than an empty answer.
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
    top_ids = _output(result, "top_token_ids")
    top_values = _output(result, "top_logprobs")
    index = _output(result, "index")
    usage = _output(result, "usage")
    if token_ids.size != logprobs.size:
        raise TritonError(f"{token_ids.size} token ids but {logprobs.size} log-probs")
    if index.size != 1 or usage.size != 3:
        raise TritonError(f"malformed index ({index.size}) or usage ({usage.size}) output")
    if top_ids.size != top_values.size or (token_ids.size and top_ids.size % token_ids.size):
        raise TritonError(f"{top_ids.size} alternatives for {token_ids.size} tokens")
    per_token = top_ids.size // token_ids.size if token_ids.size else 0
    top = [
        (
            top_ids[i * per_token : (i + 1) * per_token].tolist(),
            top_values[i * per_token : (i + 1) * per_token].tolist(),
        )
        for i in range(token_ids.size if per_token else 0)
    ]
    return Chunk(
        index=int(index[0]),
        token_ids=token_ids.tolist(),
        token_logprobs=logprobs.tolist(),
        top_logprobs=top,
        finish_reason=_output(result, "finish_reason").tobytes().decode(),
        prompt_tokens=int(usage[0]),
        completion_tokens=int(usage[1]),
        cached_tokens=int(usage[2]),
        prompt_logprobs=_output(result, "prompt_logprobs").tolist(),
    )


@contextmanager
def _client_span(name: str, attributes: Mapping[str, Any]) -> Iterator[tuple[Span, dict[str, str] | None]]:
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


def _error(model: str, message: str) -> TritonError:
    """The engine marks the requests it refuses as invalid (semconv.ENGINE_INVALID_REQUEST_PREFIX);
    Triton's scheduler, those its full queue refuses."""
    if semconv.ENGINE_INVALID_REQUEST_PREFIX in message:
        return RequestRejected(message.split(semconv.ENGINE_INVALID_REQUEST_PREFIX, 1)[1])
    if QUEUE_FULL_MESSAGE in message:
        return QueueFull(f"{model}: {message}")
    return TritonError(f"{model}: {message}")


class TritonClient:
    def __init__(self, settings: MeshSettings) -> None:
        self.settings = settings
        # tritonclient's channel options, not the mesh's: Triton's gRPC server counts pings
        # less than 5 min apart on an idle connection as strikes and sends GOAWAY after two,
        # so the mesh's 30 s keepalive would keep breaking the connection.
        self._client = triton_grpc.InferenceServerClient(settings.triton_grpc_addr)

    def _timeout(self, stream: bool = False) -> float:
        """Seconds this call may take: what is left of the inbound deadline, else the default
        (the stream default for a generation stream, which lasts as long as its answer)."""
        remaining = remaining_s()
        if remaining is not None:
            return max(remaining, 0.0)
        return self.settings.stream_deadline_s if stream else self.settings.default_deadline_s

    async def generate_stream(
        self,
        model: str,
        prompt_ids: Sequence[int],
        params: Mapping[str, Any],
        span_name: str = semconv.SPAN_TRITON_GENERATE,
        version: int | None = None,
    ) -> AsyncIterator[Chunk]:
        """Stream an engine model's chunks until every answer has its finish_reason; ``version``
        None lets Triton choose the model's version (its version policy's highest ready one).

        Closing the iterator early cancels the Triton stream, and the engine aborts the request.
        """
        attributes = {
            semconv.GEN_AI_SYSTEM: semconv.GEN_AI_SYSTEM_VALUE,
            semconv.GEN_AI_OPERATION_NAME: "text_completion",
            semconv.GEN_AI_REQUEST_MODEL: model,
            semconv.GEN_AI_REQUEST_MAX_TOKENS: params.get("max_tokens", 0),
            semconv.GEN_AI_USAGE_INPUT_TOKENS: len(prompt_ids),
        }
        for key, attribute in (
            ("temperature", semconv.GEN_AI_REQUEST_TEMPERATURE),
            ("top_p", semconv.GEN_AI_REQUEST_TOP_P),
        ):
            if key in params:
                attributes[attribute] = params[key]
        request = {"model_name": model, "inputs": generate_inputs(prompt_ids, params)}
        if version is not None:
            request["model_version"] = str(version)
            attributes[semconv.LLMESH_MODEL_VERSION] = version
        with _client_span(span_name, attributes) as (span, headers):
            responses = self._client.stream_infer(
                _single(request), stream_timeout=self._timeout(stream=True), headers=headers
            )
            answers = max(int(params.get("n", 1)), 1)
            finished: set[int] = set()
            completion_tokens: dict[int, int] = {}
            try:
                async for result, error in responses:
                    if error is not None:
                        raise _error(model, error.message())
                    chunk = parse_chunk(result)
                    completion_tokens[chunk.index] = chunk.completion_tokens
                    span.set_attribute(semconv.GEN_AI_USAGE_OUTPUT_TOKENS, sum(completion_tokens.values()))
                    if chunk.finish_reason:
                        finished.add(chunk.index)
                    yield chunk
                if len(finished) < answers:
                    raise TritonError(f"{model}: stream ended with {len(finished)} of {answers} answers finished")
                span.set_attribute(semconv.GEN_AI_RESPONSE_MODEL, model)
            except grpc.RpcError as error:
                # Errors while reading the stream arrive as raw gRPC errors, not tritonclient's.
                raise _error(model, f"{error.code().name}: {error.details()}") from None
            except InferenceServerException as error:
                raise _error(model, error.message()) from None
            finally:
                if len(finished) < answers:
                    # Stops generation in Triton when our caller went away or the stream broke.
                    responses.cancel()

    async def score(self, model: str, prompt_ids: Sequence[int], version: int | None = None) -> list[float]:
        """Log-probabilities of prompt tokens 1..n-1 under ``model`` (its engine's prompt_logprobs)."""
        params = {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": True}
        logprobs: list[float] = []
        chunks = self.generate_stream(model, prompt_ids, params, span_name=semconv.SPAN_TRITON_SCORE, version=version)
        async for chunk in chunks:
            logprobs += chunk.prompt_logprobs
        if len(logprobs) != max(len(prompt_ids) - 1, 0):
            raise TritonError(f"{model}: scoring returned {len(logprobs)} log-probs for {len(prompt_ids)} tokens")
        return logprobs

    async def embed(self, model: str, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """(texts x dimensions unit vectors, tokens read per text) from an embedding model."""
        encoded = json.dumps(list(texts), ensure_ascii=False).encode()
        attributes = {
            semconv.GEN_AI_SYSTEM: semconv.GEN_AI_SYSTEM_VALUE,
            semconv.GEN_AI_OPERATION_NAME: "embeddings",
            semconv.GEN_AI_REQUEST_MODEL: model,
        }
        with _client_span(semconv.SPAN_TRITON_EMBED, attributes) as (span, headers):
            try:
                result = await self._client.infer(
                    model,
                    [_tensor("texts", np.frombuffer(encoded, dtype=np.uint8))],
                    client_timeout=self._timeout(),
                    headers=headers,
                )
            except InferenceServerException as error:
                raise _error(model, error.message()) from None
            vectors = _output(result, "embeddings")
            counts = _output(result, "token_counts")
            if counts.size != len(texts) or vectors.size % max(len(texts), 1):
                raise TritonError(f"{model}: {vectors.size} values and {counts.size} counts for {len(texts)} texts")
            span.set_attribute(semconv.GEN_AI_USAGE_INPUT_TOKENS, int(counts.sum()))
            return vectors.reshape(len(texts), -1), counts.tolist()

    async def model_ready(self, name: str, version: int | None = None) -> bool:
        """False also when Triton cannot be reached: readiness must not raise."""
        try:
            return await self._client.is_model_ready(
                name, "" if version is None else str(version), client_timeout=self._timeout()
            )
        except InferenceServerException:
            return False

    async def model_versions(self, name: str) -> dict[int, tuple[str, str]]:
        """Triton's state and its reason per version of ``name`` that it knows of (its
        repository index: loaded, loading, unloading or unloaded)."""
        try:
            index = await self._client.get_model_repository_index(as_json=True, client_timeout=self._timeout())
        except InferenceServerException as error:
            raise TritonError(f"repository index: {error.message()}") from None
        return {
            int(entry["version"]): (entry.get("state", ""), entry.get("reason", ""))
            for entry in index.get("models", [])
            if entry.get("name") == name and entry.get("version")
        }

    async def model_config(self, name: str) -> dict[str, Any]:
        """The model's configuration as Triton serves it (JSON), the base of a load's override."""
        try:
            reply = await self._client.get_model_config(name, as_json=True, client_timeout=self._timeout())
        except InferenceServerException as error:
            raise TritonError(f"{name}: configuration: {error.message()}") from None
        return dict(reply["config"])

    async def load_model(self, name: str, config: Mapping[str, Any], timeout_s: float) -> None:
        """Loads ``name`` with ``config`` overriding its config.pbtxt (explicit model control):
        Triton loads the versions of the new version policy that are not loaded, unloads those
        left out, and answers once the new ones are ready (or failed to load)."""
        try:
            await self._client.load_model(name, config=json.dumps(config), client_timeout=timeout_s)
        except InferenceServerException as error:
            raise TritonError(f"{name}: load: {error.message()}") from None

    async def close(self) -> None:
        await self._client.close()
