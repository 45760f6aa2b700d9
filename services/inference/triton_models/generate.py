"""Streaming text generation for the decoupled Triton models `llmesh-small` / `llmesh-large`.

Tensor contract: docs/ARCHITECTURE.md ("Triton tensor contract"). One request streams one
response per sampled token (several when stop-string hold-back releases them together); the last
response carries `finish_reason` (`stop` or `length`) and the COMPLETE_FINAL flag.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .common import (
    Log,
    check_numpy,
    config_param,
    context_length,
    load_causal_lm,
    parse_model_config,
    pb_utils,
    resolve_model_dir,
)

REPLACEMENT_CHAR = "\ufffd"


@dataclass
class GenerationParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()

    def validate(self) -> None:
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if not (self.temperature >= 0.0):  # also rejects NaN
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Chunk:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = ""


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Greedy at temperature 0, else temperature + nucleus (top_p) sampling from `generator`."""
    if temperature <= 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        # stable sort: equal probabilities keep vocabulary order, so a seed replays exactly
        sorted_probs, order = torch.sort(probs, descending=True, stable=True)
        # keep the smallest prefix whose mass reaches top_p (the token crossing it included)
        keep = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) < top_p
        sorted_probs = sorted_probs * keep
        return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


class StopMatcher:
    """Holds back tokens whose text could still become (part of) a stop string.

    Tokens are released only once no stop string can start inside their text, so a client never
    receives any piece of a stop string. When a stop string appears, the tokens wholly before it
    are released; a token whose text straddles the start of the stop string is dropped with it
    (token ids cannot be split), so the text just before a stop string can lose a few characters.
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str]) -> None:
        self.decode = decode
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.sent = 0

    def _release(self, limit: int, full_text: str) -> tuple[list[int], list[float]]:
        """Release the longest run of held tokens whose text is a prefix of full_text[:limit]."""
        for k in range(len(self.ids), self.sent, -1):
            text = full_text if k == len(self.ids) else self.decode(self.ids[:k])
            if len(text) <= limit and full_text.startswith(text) and not text.endswith(REPLACEMENT_CHAR):
                out = self.ids[self.sent : k], self.logprobs[self.sent : k]
                self.sent = k
                return out
        return [], []

    def push(self, token_id: int, logprob: float) -> tuple[list[int], list[float], bool]:
        """Add a token; returns (tokens now safe to send, their logprobs, stop string found)."""
        self.ids.append(token_id)
        self.logprobs.append(logprob)
        text = self.decode(self.ids)
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            ids, lps = self._release(min(hits), text)
            return ids, lps, True
        limit = len(text)
        # an unfinished UTF-8 sequence decodes to U+FFFD and may turn into a stop string's start
        stripped = text.rstrip(REPLACEMENT_CHAR)
        limit = min(limit, len(stripped))
        for s in self.stops:
            for n in range(min(len(s) - 1, len(stripped)), 0, -1):
                if stripped.endswith(s[:n]):
                    limit = min(limit, len(stripped) - n)
                    break
        ids, lps = self._release(limit, text)
        return ids, lps, False

    def flush(self) -> tuple[list[int], list[float]]:
        """Everything still held: generation ended without completing a stop string."""
        out = self.ids[self.sent :], self.logprobs[self.sent :]
        self.sent = len(self.ids)
        return out


def generate(
    model: Any,
    prompt_ids: Sequence[int],
    params: GenerationParams,
    *,
    eos_ids: set[int],
    decode: Callable[[list[int]], str],
    max_context: int | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[Chunk]:
    """Incremental decoding with the KV cache; yields chunks, the last with a finish_reason."""
    params.validate()
    if not prompt_ids:
        raise ValueError("input_ids is empty")
    if max_context is not None and len(prompt_ids) >= max_context:
        raise ValueError(f"prompt has {len(prompt_ids)} tokens; the model's context is {max_context}")
    if params.max_tokens == 0:
        yield Chunk(finish_reason="length")
        return

    generator = torch.Generator()
    generator.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
    matcher = StopMatcher(decode, params.stop) if params.stop else None
    next_input = torch.tensor([list(prompt_ids)], dtype=torch.long)
    past = None
    total = len(prompt_ids)

    with torch.inference_mode():
        for step in range(params.max_tokens):
            if cancelled():
                return
            out = model(input_ids=next_input, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1].float()
            token = sample_token(logits, params.temperature, params.top_p, generator)
            # log-prob under the model itself (temperature 1, no top_p), as OpenAI reports it
            logprob = float(torch.log_softmax(logits, dim=-1)[token])

            if token in eos_ids:
                ids, lps = matcher.flush() if matcher else ([], [])
                yield Chunk(ids, lps, "stop")
                return
            if matcher:
                ids, lps, hit = matcher.push(token, logprob)
                if hit:
                    yield Chunk(ids, lps, "stop")
                    return
            else:
                ids, lps = [token], [logprob]
            total += 1
            if step == params.max_tokens - 1 or (max_context is not None and total >= max_context):
                if matcher:
                    more_ids, more_lps = matcher.flush()
                    ids, lps = ids + more_ids, lps + more_lps
                yield Chunk(ids, lps, "length")
                return
            if ids:
                yield Chunk(ids, lps)
            next_input = torch.tensor([[token]], dtype=torch.long)


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _scalar(request: Any, name: str, default: Any) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    arr = tensor.as_numpy()
    if arr.size == 0:
        return default
    return arr.reshape(-1)[0].item()


def parse_request(request: Any) -> tuple[list[int], GenerationParams]:
    ids_tensor = pb_utils.get_input_tensor_by_name(request, "input_ids")
    if ids_tensor is None:
        raise ValueError("missing input_ids")
    prompt_ids = [int(i) for i in ids_tensor.as_numpy().reshape(-1)]
    stop_tensor = pb_utils.get_input_tensor_by_name(request, "stop")
    stops: list[str] = []
    if stop_tensor is not None:
        for s in stop_tensor.as_numpy().reshape(-1):
            stops.append(s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s))
    seed = _scalar(request, "seed", None)
    params = GenerationParams(
        max_tokens=int(_scalar(request, "max_tokens", 16)),
        temperature=float(_scalar(request, "temperature", 1.0)),
        top_p=float(_scalar(request, "top_p", 1.0)),
        seed=None if seed is None else int(seed),
        stop=stops,
    )
    params.validate()
    return prompt_ids, params


def _response(chunk: Chunk) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor("token_ids", np.asarray(chunk.token_ids, dtype=np.int64)),
            pb_utils.Tensor("token_logprobs", np.asarray(chunk.logprobs, dtype=np.float32)),
            pb_utils.Tensor("finish_reason", np.asarray([chunk.finish_reason.encode()], dtype=np.object_)),
        ]
    )


class TritonPythonModel:
    """Decoupled: execute() hands each request to a worker thread and returns at once."""

    def initialize(self, args: dict[str, Any]) -> None:
        check_numpy()
        cfg = parse_model_config(args)
        self.name = args["model_name"]
        self.log = Log(self.name)
        if not pb_utils.using_decoupled_model_transaction_policy(cfg):
            raise ValueError(f"{self.name}: generation models must use the decoupled transaction policy")
        torch_threads = int(config_param(cfg, "torch_threads", "1"))
        workers = int(config_param(cfg, "max_concurrent_requests", "4"))
        path = resolve_model_dir(cfg, args.get("model_version"))
        started = time.monotonic()
        self.model, self.tokenizer = load_causal_lm(path, torch_threads)
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        self.max_context = context_length(self.model)
        self.vocab_size = int(self.model.config.vocab_size)
        with torch.inference_mode():  # first forward pays one-time init; not the first client
            self.model(input_ids=torch.tensor([[0]]), use_cache=True)
        # torch.set_num_threads applies per thread for the OpenMP pool, so each worker sets it
        self.pool = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix=f"{self.name}-gen",
            initializer=torch.set_num_threads,
            initargs=(torch_threads,),
        )
        self.log.info(
            f"loaded {path} in {time.monotonic() - started:.1f}s (vocab {self.vocab_size}, context "
            f"{self.max_context}, eos {sorted(self.eos_ids)}, {workers} workers x {torch_threads} torch threads)"
        )

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                # read the inputs here: the request object is only guaranteed during execute()
                prompt_ids, params = parse_request(request)
                bad = [i for i in prompt_ids if not 0 <= i < self.vocab_size]
                if bad:
                    raise ValueError(f"token ids out of range [0, {self.vocab_size}): {bad[:5]}")
                if not prompt_ids:
                    raise ValueError("input_ids is empty")
                if self.max_context and len(prompt_ids) >= self.max_context:
                    raise ValueError(f"prompt has {len(prompt_ids)} tokens; the context is {self.max_context}")
            except Exception as e:  # noqa: BLE001 - every error must reach the client
                self._send_error(sender, f"bad request: {e}")
                continue
            self.pool.submit(self._run, sender, prompt_ids, params)
        return None

    def _send_error(self, sender: Any, message: str) -> None:
        try:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - client already gone
            self.log.warn(f"could not send error ({message}): {e}")

    def _run(self, sender: Any, prompt_ids: list[int], params: GenerationParams) -> None:
        finished = False
        try:
            for chunk in generate(
                self.model, prompt_ids, params, eos_ids=self.eos_ids, decode=self._decode,
                max_context=self.max_context, cancelled=sender.is_cancelled,
            ):  # fmt: skip
                final = bool(chunk.finish_reason)
                sender.send(_response(chunk), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0)
                finished = final
            if not finished:  # cancelled by the client: close the stream without more data
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                finished = True
        except Exception as e:  # noqa: BLE001 - every error must reach the client
            self.log.error(f"generation failed: {type(e).__name__}: {e}")
            if not finished:
                self._send_error(sender, f"{type(e).__name__}: {e}")

    def finalize(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
