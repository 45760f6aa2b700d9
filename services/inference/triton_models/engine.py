"""vLLM's async engine inside Triton's python backend, the way NVIDIA's vLLM backend runs it.

One decoupled model per served LLM. ``initialize`` builds ``AsyncLLM`` on an asyncio loop in a
thread of its own; ``execute`` reads each request, hands it to that loop and returns at once, so
every request in flight shares the engine's continuous batching, and responses go back through
each request's response sender. Tensor contract: ``docs/ARCHITECTURE.md`` ("Triton tensor
contract").

The engine needs numpy 2 and the stub is built against numpy 1, so no tensor crosses the stub
through numpy: inputs are read and outputs built with DLPack (torch), and text travels as UTF-8
bytes in UINT8 tensors (under numpy 2, ``as_numpy`` and ``Tensor(name, ndarray)`` lose tensors
without an error: docs/ARCHITECTURE.md, "Two Python environments").

This module runs in the engine's environment (``.venv-engine``): it imports vLLM and torch, and
from the repository only ``mesh.semconv`` (names, no dependencies).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils.dlpack

from mesh import semconv

try:  # only importable inside the python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # unit tests of the parsing helpers
    pb_utils = None

# Config parameters of the model (config.pbtxt) that are not engine arguments.
MODEL_DIR = "model_dir"
MODEL_DIR_ENV = "model_dir_env"
# VLLM_CPU_KVCACHE_SPACE: the CPU engine sizes its KV cache from this (whole GiB), not from
# gpu_memory_utilization.
CPU_KV_CACHE_GIB = "cpu_kv_cache_gib"
# Every other parameter named engine.<arg> is passed to vllm's AsyncEngineArgs as <arg>.
ENGINE_PREFIX = "engine."

# Request parameters (the `parameters` input, JSON) and the SamplingParams field each one sets.
# Anything else is refused by name: a parameter silently ignored is worse than an error.
SAMPLING_KEYS = {
    "max_tokens": "max_tokens",
    "min_tokens": "min_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "stop": "stop",
    "n": "n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty",
    "logit_bias": "logit_bias",
    "ignore_eos": "ignore_eos",
}
# Also accepted: "logprobs" (alternatives per sampled token; the sampled token's own log-prob is
# always returned), "prompt_logprobs" (bool: log-prob of every prompt token, for scoring) and
# "structured_output" ({"json": schema} | {"json_object": true} | {"regex": ...} | {"choice": [...]}
# | {"grammar": ...}).
OTHER_KEYS = {"logprobs", "prompt_logprobs", "structured_output"}
STRUCTURED_KINDS = {"json", "json_object", "regex", "choice", "grammar"}
MAX_LOGPROBS = 20
# How often requests in flight are checked for cancellation by their client.
CANCEL_POLL_S = 0.05


class InvalidRequest(ValueError):
    """The request itself is wrong; the client's fault, never the model's."""


def parse_value(raw: str) -> Any:
    """A config.pbtxt string parameter as the engine argument it stands for ("2048" -> 2048)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def engine_settings(parameters: Mapping[str, str]) -> tuple[dict[str, Any], int | None]:
    """(AsyncEngineArgs keyword arguments, CPU KV cache GiB) from the model's config parameters."""
    kwargs = {
        key[len(ENGINE_PREFIX) :]: parse_value(value)
        for key, value in parameters.items()
        if key.startswith(ENGINE_PREFIX)
    }
    kv_gib = parameters.get(CPU_KV_CACHE_GIB)
    return kwargs, int(kv_gib) if kv_gib else None


def sampling_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    """SamplingParams keyword arguments for one request; InvalidRequest names what is wrong."""
    if not isinstance(params, Mapping):
        raise InvalidRequest("parameters must be a JSON object")
    unknown = sorted(set(params) - set(SAMPLING_KEYS) - OTHER_KEYS)
    if unknown:
        raise InvalidRequest(f"unsupported parameter(s): {', '.join(unknown)}")
    kwargs = {SAMPLING_KEYS[key]: value for key, value in params.items() if key in SAMPLING_KEYS}
    if "logit_bias" in kwargs:
        try:
            kwargs["logit_bias"] = {int(token): float(bias) for token, bias in kwargs["logit_bias"].items()}
        except (AttributeError, TypeError, ValueError):
            raise InvalidRequest("logit_bias must map token ids to numbers") from None
    logprobs = params.get("logprobs", 0)
    if not isinstance(logprobs, int) or isinstance(logprobs, bool) or not 0 <= logprobs <= MAX_LOGPROBS:
        raise InvalidRequest(f"logprobs must be an integer from 0 to {MAX_LOGPROBS}, got {logprobs!r}")
    # Always at least the sampled token's own log-prob: usage reports and the cascade read it.
    kwargs["logprobs"] = logprobs
    if params.get("prompt_logprobs"):
        kwargs["prompt_logprobs"] = 0
    structured = params.get("structured_output")
    if structured is not None:
        if not isinstance(structured, Mapping) or len(structured) != 1 or not set(structured) <= STRUCTURED_KINDS:
            raise InvalidRequest(f"structured_output must have exactly one of: {', '.join(sorted(STRUCTURED_KINDS))}")
        kwargs["structured_outputs"] = dict(structured)
    return kwargs


@dataclass
class Choice:
    """What one of a request's ``n`` answers has produced so far."""

    completion_tokens: int = 0
    finished: bool = False


@dataclass
class Flight:
    """One request in the engine."""

    request_id: str
    sender: Any
    choices: dict[int, Choice] = field(default_factory=dict)
    cancelled: bool = False


def _input(request: Any, name: str) -> torch.Tensor | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else torch.from_dlpack(tensor.to_dlpack())


def _output(name: str, tensor: torch.Tensor) -> Any:
    return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(tensor.contiguous()))


def _text(value: str) -> torch.Tensor:
    return torch.tensor(list(value.encode()), dtype=torch.uint8)


def read_request(request: Any) -> tuple[list[int], dict[str, Any]]:
    ids = _input(request, "input_ids")
    if ids is None or ids.numel() == 0:
        raise InvalidRequest("input_ids is empty")
    raw = _input(request, "parameters")
    try:
        params = json.loads(bytes(raw.tolist()).decode()) if raw is not None and raw.numel() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidRequest(f"parameters is not UTF-8 JSON: {error}") from None
    return ids.reshape(-1).tolist(), params


def _token_logprobs(completion: Any, top_k: int) -> tuple[list[float], list[int], list[float]]:
    """Each new token's own log-prob, and its ``top_k`` most likely alternatives (rank order)."""
    own: list[float] = []
    top_ids: list[int] = []
    top_values: list[float] = []
    for token, entry in zip(completion.token_ids, completion.logprobs or [], strict=False):
        own.append(float(entry[token].logprob))
        if top_k:
            ranked = sorted((lp.rank, tid, lp.logprob) for tid, lp in entry.items() if lp.rank is not None)[:top_k]
            top_ids += [tid for _, tid, _ in ranked]
            top_values += [float(value) for _, _, value in ranked]
    return own, top_ids, top_values


def _prompt_logprobs(output: Any) -> list[float]:
    """log p(token i | tokens < i) for i = 1..n-1 (the first prompt token has none)."""
    values = []
    for token, entry in zip(output.prompt_token_ids[1:], (output.prompt_logprobs or [None])[1:], strict=False):
        if entry is not None:
            values.append(float(entry[token].logprob))
    return values


class EngineMetrics:
    """The engine's load and work as Triton metrics (on Triton's /metrics, labelled by model).

    The router prices a busy model higher from these, and tests read them to see that a cancelled
    request really left the engine.
    """

    def __init__(self, model: str) -> None:
        labels = {"model": model}
        # A family must outlive its metrics (Triton refuses to set a metric of a deleted family).
        self.families: list[Any] = []

        def family(name: str, kind: Any, description: str) -> Any:
            self.families.append(pb_utils.MetricFamily(name=name, description=description, kind=kind))
            return self.families[-1].Metric(labels=labels)

        gauge, counter = pb_utils.MetricFamily.GAUGE, pb_utils.MetricFamily.COUNTER
        self.running = family(semconv.METRIC_ENGINE_RUNNING, gauge, "Requests the engine is generating for")
        self.waiting = family(semconv.METRIC_ENGINE_WAITING, gauge, "Requests queued in the engine")
        self.kv_cache = family(semconv.METRIC_ENGINE_KV_CACHE_USAGE, gauge, "Share of the KV cache in use (0-1)")
        self.prompt_tokens = family(semconv.METRIC_ENGINE_PROMPT_TOKENS, counter, "Prompt tokens prefilled")
        self.generation_tokens = family(semconv.METRIC_ENGINE_GENERATION_TOKENS, counter, "Tokens generated")
        self.aborted = family(semconv.METRIC_ENGINE_ABORTED, counter, "Requests aborted because their client left")

    def stat_logger(self) -> Any:
        """A vLLM stat logger factory that feeds these metrics at every engine step."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        metrics = self

        class TritonStatLogger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any, *args: Any, **kwargs: Any) -> None:
                # Runs inside vLLM's output handler: an exception here would stop the engine.
                try:
                    metrics.update(scheduler_stats, iteration_stats)
                except Exception as error:
                    pb_utils.Logger.log_warn(f"engine metrics not updated: {error}")

            def log_engine_initialized(self) -> None:
                pass

        return TritonStatLogger

    def update(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        if scheduler_stats is not None:
            self.running.set(scheduler_stats.num_running_reqs)
            self.waiting.set(scheduler_stats.num_waiting_reqs)
            self.kv_cache.set(scheduler_stats.kv_cache_usage)
        if iteration_stats is not None:
            if iteration_stats.num_generation_tokens:
                self.generation_tokens.increment(iteration_stats.num_generation_tokens)
            if iteration_stats.num_prompt_tokens:
                self.prompt_tokens.increment(iteration_stats.num_prompt_tokens)


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        self.name = args["model_name"]
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise ValueError(f"{self.name}: engine models must use the decoupled transaction policy")
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        engine_kwargs, kv_gib = engine_settings(parameters)
        if kv_gib is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_gib)
        model_dir = resolve_model_dir(self.name, parameters, args.get("model_version"))

        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        started = time.monotonic()
        self.metrics = EngineMetrics(self.name)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"{self.name}-engine", daemon=True)
        self.thread.start()
        engine_args = AsyncEngineArgs(model=str(model_dir), served_model_name=[self.name], **engine_kwargs)

        async def build() -> Any:
            # Built on the engine's own loop: AsyncLLM binds its output handler to the running loop.
            return AsyncLLM.from_engine_args(engine_args, stat_loggers=[self.metrics.stat_logger()])

        self.engine = asyncio.run_coroutine_threadsafe(build(), self.loop).result()
        self.max_model_len = self.engine.model_config.max_model_len
        self.vocab_size = self.engine.model_config.get_vocab_size()
        self.flights: dict[str, Flight] = {}
        self.watcher = asyncio.run_coroutine_threadsafe(self._watch_cancellations(), self.loop)
        self._log(
            f"vLLM engine ready in {time.monotonic() - started:.1f}s: {model_dir} "
            f"(max_model_len {self.max_model_len}, vocab {self.vocab_size}, {engine_kwargs}, kv cache {kv_gib} GiB)"
        )

    def _log(self, message: str, level: str = "info") -> None:
        getattr(pb_utils.Logger, f"log_{level}")(f"[{self.name}] {message}")

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                # The request object is only guaranteed during execute(): read it all here.
                prompt_ids, params = read_request(request)
                kwargs = sampling_kwargs(params)
                self._check_prompt(prompt_ids, kwargs)
            except InvalidRequest as error:
                self._send_error(sender, str(error), invalid=True)
                continue
            flight = Flight(f"{self.name}-{uuid.uuid4().hex}", sender)
            asyncio.run_coroutine_threadsafe(self._serve(flight, prompt_ids, kwargs), self.loop)
        return None

    def _check_prompt(self, prompt_ids: list[int], kwargs: dict[str, Any]) -> None:
        bad = next((i for i in prompt_ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise InvalidRequest(f"token id {bad} is outside the vocabulary [0, {self.vocab_size})")
        max_tokens = kwargs.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be a positive integer, got {max_tokens!r}")
        if len(prompt_ids) + max_tokens > self.max_model_len:
            raise InvalidRequest(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the context of "
                f"{self.name} ({self.max_model_len} tokens)"
            )

    def _send_error(self, sender: Any, message: str, *, invalid: bool) -> None:
        code = pb_utils.TritonError.INVALID_ARG if invalid else pb_utils.TritonError.INTERNAL
        # The prefix survives Triton's streaming error path, which carries a message but no code.
        prefix = semconv.ENGINE_INVALID_REQUEST_PREFIX if invalid else ""
        try:
            sender.send(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(prefix + message, code)),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
        except Exception as error:  # the client is already gone: nobody to tell
            self._log(f"could not send error ({message}): {error}", "warn")

    async def _serve(self, flight: Flight, prompt_ids: list[int], kwargs: dict[str, Any]) -> None:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        top_k = kwargs["logprobs"]
        self.flights[flight.request_id] = flight
        started = False
        final_sent = False
        try:
            structured = kwargs.pop("structured_outputs", None)
            try:
                sampling = SamplingParams(
                    **kwargs,
                    structured_outputs=StructuredOutputsParams(**structured) if structured else None,
                    output_kind=RequestOutputKind.DELTA,
                )
            except (TypeError, ValueError, VLLMClientError) as error:
                raise InvalidRequest(str(error)) from None
            stream = self.engine.generate({"prompt_token_ids": prompt_ids}, sampling, flight.request_id)
            async for output in stream:
                first = not started
                started = True
                if flight.cancelled:
                    break
                responses = [self._response(flight, output, completion, top_k, first) for completion in output.outputs]
                if output.finished:
                    for response in responses[:-1]:
                        flight.sender.send(response)
                    if responses:
                        flight.sender.send(responses[-1], flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    else:
                        flight.sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    final_sent = True
                    return
                for response in responses:
                    flight.sender.send(response)
        except InvalidRequest as error:
            self._send_error(flight.sender, str(error), invalid=True)
            final_sent = True
        except Exception as error:
            # vLLM validates a request (e.g. compiles its JSON schema) when it is added, and says
            # with VLLMClientError that the request, not the engine, is at fault.
            invalid = isinstance(error, VLLMClientError) or (isinstance(error, ValueError) and not started)
            if not invalid:
                self._log(f"generation failed: {type(error).__name__}: {error}", "error")
            self._send_error(
                flight.sender, str(error) if invalid else f"{type(error).__name__}: {error}", invalid=invalid
            )
            final_sent = True
        finally:
            self.flights.pop(flight.request_id, None)
            if flight.cancelled or not final_sent:
                await self.engine.abort(flight.request_id)
                if not final_sent:
                    # The client went away: the stream is gone with it.
                    with contextlib.suppress(Exception):
                        flight.sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _response(self, flight: Flight, output: Any, completion: Any, top_k: int, first: bool) -> Any:
        choice = flight.choices.setdefault(completion.index, Choice())
        choice.completion_tokens += len(completion.token_ids)
        finish_reason = completion.finish_reason or ""
        own, top_ids, top_values = _token_logprobs(completion, top_k)
        prompt_logprobs = _prompt_logprobs(output) if first and output.prompt_logprobs else []
        usage = [len(output.prompt_token_ids), choice.completion_tokens, output.num_cached_tokens or 0]
        return pb_utils.InferenceResponse(
            output_tensors=[
                _output("token_ids", torch.tensor(list(completion.token_ids), dtype=torch.int64)),
                _output("token_logprobs", torch.tensor(own, dtype=torch.float32)),
                _output("top_token_ids", torch.tensor(top_ids, dtype=torch.int64)),
                _output("top_logprobs", torch.tensor(top_values, dtype=torch.float32)),
                _output("prompt_logprobs", torch.tensor(prompt_logprobs, dtype=torch.float32)),
                _output("index", torch.tensor([completion.index], dtype=torch.int32)),
                _output("finish_reason", _text(finish_reason)),
                _output("usage", torch.tensor(usage, dtype=torch.int64)),
            ]
        )

    async def _watch_cancellations(self) -> None:
        """Aborts the engine request of every client that went away (Triton marks it cancelled),
        also while the request still waits in the engine's queue and produces no output."""
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            for flight in list(self.flights.values()):
                if not flight.cancelled and flight.sender.is_cancelled():
                    flight.cancelled = True
                    self.metrics.aborted.increment(1)
                    await self.engine.abort(flight.request_id)

    def finalize(self) -> None:
        async def stop() -> None:
            self.watcher.cancel()
            for request_id in list(self.flights):
                await self.engine.abort(request_id)
            self.engine.shutdown()

        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


def resolve_model_dir(name: str, parameters: Mapping[str, str], version: str | None = None) -> Any:
    """The HF directory: `model_dir.v<version>` (a version loaded with its own weights: `llmesh
    models load --model-dir`), else the variable named by `model_dir_env`, else `model_dir`
    (relative paths are relative to the repository root, so config.pbtxt stays portable)."""
    from pathlib import Path

    env_name = parameters.get(MODEL_DIR_ENV)
    raw = (
        (parameters.get(f"{MODEL_DIR}.v{version}") if version else None)
        or (os.environ.get(env_name) if env_name else None)
        or parameters.get(MODEL_DIR)
    )
    if not raw:
        raise ValueError(f"{name}: no `{MODEL_DIR}` parameter in config.pbtxt")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = Path(__file__).resolve().parents[3] / path
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{name}: {path} is not a Hugging Face model directory (no config.json); "
            f"`make models` builds it{f', or set {env_name}' if env_name else ''}"
        )
    return path
