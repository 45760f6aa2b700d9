"""The one check of sampling parameters, used by both edges (through the gateway pipeline) and
by the inference service, so that a request refused in one place is refused in all of them and
never reaches an engine that would count it as a model failure.

Ranges are OpenAI's; the token budget is the serving model's context.
"""

from __future__ import annotations

import json
import math

import jsonschema

from llmesh.common.v1 import common_pb2

MAX_TEMPERATURE = 2.0
MAX_PENALTY = 2.0
MAX_LOGIT_BIAS = 100.0
MAX_TOP_LOGPROBS = 20
# The legacy completions endpoint's logprobs (alternatives per token).
MAX_COMPLETION_LOGPROBS = 5
MAX_STOP_SEQUENCES = 4
MAX_N = 8
# Token counts travel as uint32 in the protos and as int32 in some engines.
MAX_TOKENS_LIMIT = 2**31 - 1


class SamplingError(ValueError):
    """A sampling parameter out of range; ``param`` names it as the client sent it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def _finite_in(value: float, low: float, high: float) -> bool:
    return math.isfinite(value) and low <= value <= high


def check_sampling(sampling: common_pb2.SamplingParams) -> None:
    """Raise SamplingError for the first parameter out of range."""
    if sampling.max_tokens > MAX_TOKENS_LIMIT:
        raise SamplingError("max_tokens", f"max_tokens must be at most {MAX_TOKENS_LIMIT}.")
    if sampling.HasField("temperature") and not _finite_in(sampling.temperature, 0.0, MAX_TEMPERATURE):
        raise SamplingError("temperature", f"temperature must be between 0 and {MAX_TEMPERATURE:g}.")
    # top_p = 0 would keep no token at all: OpenAI's range is (0, 1].
    if sampling.HasField("top_p") and not (_finite_in(sampling.top_p, 0.0, 1.0) and sampling.top_p > 0):
        raise SamplingError("top_p", "top_p must be greater than 0 and at most 1.")
    for name in ("presence_penalty", "frequency_penalty"):
        if sampling.HasField(name) and not _finite_in(getattr(sampling, name), -MAX_PENALTY, MAX_PENALTY):
            raise SamplingError(name, f"{name} must be between -{MAX_PENALTY:g} and {MAX_PENALTY:g}.")
    if len(sampling.stop) > MAX_STOP_SEQUENCES:
        raise SamplingError("stop", f"At most {MAX_STOP_SEQUENCES} stop sequences are allowed.")
    if any(not stop for stop in sampling.stop):
        raise SamplingError("stop", "A stop sequence may not be empty.")
    if sampling.n > MAX_N:
        raise SamplingError("n", f"n must be between 1 and {MAX_N}.")
    if sampling.top_logprobs > MAX_TOP_LOGPROBS:
        raise SamplingError("top_logprobs", f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}.")
    if sampling.HasField("top_k") and sampling.top_k < 1:
        raise SamplingError("top_k", "top_k must be at least 1.")
    for token, bias in sampling.logit_bias.items():
        if token < 0 or not _finite_in(bias, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS):
            raise SamplingError(
                "logit_bias", f"logit_bias maps token ids to values between -100 and 100; got {token}: {bias}."
            )
    if sampling.structured_output.WhichOneof("format") == "json_schema":
        try:
            schema = json.loads(sampling.structured_output.json_schema)
        except json.JSONDecodeError as error:
            raise SamplingError("response_format", f"The JSON schema is not valid JSON: {error}.") from None
        if not isinstance(schema, dict):
            raise SamplingError("response_format", "The JSON schema must be a JSON object.")
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as error:
            raise SamplingError("response_format", f"The JSON schema is not valid: {error.message}.") from None


def check_budget(sampling: common_pb2.SamplingParams, prompt_tokens: int, model: str, context_length: int) -> None:
    """The prompt and the answer must fit the model's context together."""
    if prompt_tokens >= context_length:
        raise SamplingError(
            "messages",
            f"The prompt is {prompt_tokens} tokens long; {model} takes at most {context_length} tokens in all "
            f"(prompt and answer).",
        )
    room = context_length - prompt_tokens
    if sampling.max_tokens > room:
        raise SamplingError(
            "max_tokens",
            f"max_tokens is {sampling.max_tokens}, but {model} has room for at most {room} more tokens after "
            f"this {prompt_tokens}-token prompt (context {context_length}).",
        )
