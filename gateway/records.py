"""What an edge hands the pipeline and what it gets back: plain records, the same for the REST
edge, the gRPC edge and the batch worker, and for what is built on a request's outcome (audit,
usage, experiments), so that none of them depends on the pipeline itself."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from llmesh.common.v1 import common_pb2
from llmesh.preprocess.v1 import preprocess_pb2
from mesh.catalog import AUTO_MODEL

# Keyed by int: records carry finish reasons as the ints protos hold them as.
_FINISH_REASON_NAMES: dict[int, str] = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_CONTENT_FILTER: "content_filter",
    common_pb2.FINISH_REASON_ERROR: "error",
    common_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
}


def finish_reason_name(reason: int) -> str:
    """OpenAI's name for a finish reason; an unset one reads as a normal stop."""
    return _FINISH_REASON_NAMES.get(reason, "stop")


@dataclass(frozen=True)
class ChatInput:
    """One request as every edge hands it to the pipeline."""

    messages: Sequence[common_pb2.ChatMessage] = ()
    # /v1/completions: a raw prompt that gets no chat template; messages stay empty.
    prompt: str | None = None
    # "auto" (or empty) lets the router choose.
    model: str = AUTO_MODEL
    sampling: common_pb2.SamplingParams = field(default_factory=common_pb2.SamplingParams)
    user: str = ""
    # The caller's tenant (from its API key); empty means settings.default_tenant.
    tenant: str = ""
    # A/B tests: the id of the session unit, and variants the caller forces (for testing).
    session_id: str = ""
    forced_variants: Mapping[str, str] = field(default_factory=dict)
    # Functions the model may call (gateway/tools.py).
    tools: Sequence[common_pb2.Tool] = ()
    tool_choice: common_pb2.ToolChoice = field(default_factory=common_pb2.ToolChoice)
    # False when the caller said `Cache-Control: no-cache`: never answered from the response cache.
    use_cache: bool = True

    @property
    def operation(self) -> str:
        """The GenAI operation name, which also picks the OpenAI id prefix."""
        return "chat" if self.prompt is None else "text_completion"


@dataclass(frozen=True)
class ChoiceResult:
    """One of a request's answers, as released."""

    index: int
    text: str
    finish_reason: common_pb2.FinishReason
    # Explains a content_filter finish when blocked; empty otherwise.
    verdict: common_pb2.SafetyVerdict = field(default_factory=common_pb2.SafetyVerdict)
    # With logprobs: entries that spell `text` exactly.
    logprobs: Sequence[common_pb2.TokenLogprob] = ()
    tool_calls: Sequence[common_pb2.ToolCall] = ()
    # The stop string that ended the text, if one did.
    stop_sequence: str = ""


@dataclass(frozen=True)
class ChatResult:
    id: str
    created: int
    # The model that answered (differs from the routed one after failover).
    model: str
    choices: Sequence[ChoiceResult]
    # Summed over every answer.
    usage: common_pb2.Usage
    route_reason: str
    # experiment name -> variant that served this request.
    experiments: dict[str, str] = field(default_factory=dict)
    # The response cache: "hit", "miss", "bypass" (the caller said no-cache), "" (not cacheable).
    cache: str = ""

    # The first answer's, for callers that ask for one answer.
    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def finish_reason(self) -> common_pb2.FinishReason:
        return self.choices[0].finish_reason

    @property
    def verdict(self) -> common_pb2.SafetyVerdict:
        """The first blocking verdict of any answer, else the first answer's."""
        return next((c.verdict for c in self.choices if c.verdict.blocked), self.choices[0].verdict)


@dataclass(frozen=True)
class StreamChunk:
    """Text released for one answer (``index``); each answer's last chunk has its finish
    reason, and the stream's last chunk also the usage of all answers."""

    text: str = ""
    finish_reason: common_pb2.FinishReason = common_pb2.FINISH_REASON_UNSPECIFIED
    usage: common_pb2.Usage | None = None
    verdict: common_pb2.SafetyVerdict | None = None
    index: int = 0
    logprobs: Sequence[common_pb2.TokenLogprob] = ()
    tool_calls: Sequence[common_pb2.ToolCall] = ()
    stop_sequence: str = ""


@dataclass
class ChatStream:
    """A streaming answer whose id, model and route are known before its first chunk is read,
    so an edge can send them as headers; an error before that is a plain error response."""

    id: str
    created: int
    model: str
    route_reason: str
    chunks: AsyncGenerator[StreamChunk, None]
    # Cancels the upstream calls and ends the span; runs at most once.
    close: Callable[[], None]
    experiments: dict[str, str] = field(default_factory=dict)
    # How many answers (n) the chunks belong to.
    answers: int = 1
    # As ChatResult.cache.
    cache: str = ""

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self.chunks

    async def aclose(self) -> None:
        """Release everything, read to the end or not (the caller may have gone away)."""
        await self.chunks.aclose()
        # A generator closed before its first step never runs its own clean-up.
        self.close()


@dataclass(frozen=True)
class EmbedResult:
    id: str
    model: str
    vectors: Sequence[Sequence[float]]
    usage: common_pb2.Usage


@dataclass(frozen=True)
class ModerationResult:
    id: str
    results: Sequence[preprocess_pb2.ModerationResult]
