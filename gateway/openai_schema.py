"""OpenAI's request bodies as pydantic models, and their translation to the pipeline's input.

Fields the platform does not serve (tools, logprobs, penalties, ...) are ignored rather than
refused, as OpenAI-compatible servers commonly do; n is the exception because ignoring it would
return fewer choices than asked for.

Types are strict: ``"stream": "yes"``, ``"max_tokens": "5"`` or ``"temperature": true`` are
refused rather than coerced, since a client that sends them has a bug worth hearing about.
Every string must be valid Unicode: JSON's ``\ud800`` escapes decode to lone surrogates, which
no protobuf string (and no tokenizer) can carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from gateway.pipeline import MAX_TEMPERATURE, MAX_TOP_P, ChatInput
from llmesh.common.v1 import common_pb2
from mesh.catalog import AUTO_MODEL

_ROLES = {
    "system": common_pb2.ROLE_SYSTEM,
    # OpenAI's newer name for system messages.
    "developer": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
    "tool": common_pb2.ROLE_TOOL,
}


def _valid_unicode(text: str) -> str:
    for index, char in enumerate(text):
        if "\ud800" <= char <= "\udfff":
            raise ValueError(f"the string has a lone surrogate (U+{ord(char):04X}) at character {index}")
    return text


# A string that can be encoded as UTF-8.
Text = Annotated[str, AfterValidator(_valid_unicode)]
STRICT = ConfigDict(strict=True)


def _text_of(content: Any) -> Any:
    """Content may be a list of parts; only text parts can be served."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ValueError("only text content parts are supported")
        texts.append(part["text"])
    return "\n".join(texts)


def _as_list(value: Any) -> Any:
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


def _single_prompt(value: Any) -> Any:
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], str):
            raise ValueError("exactly one prompt string is supported")
        return value[0]
    return value


class Message(BaseModel):
    model_config = STRICT

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[Text | None, BeforeValidator(_text_of)] = None
    name: Text | None = None

    def to_proto(self) -> common_pb2.ChatMessage:
        return common_pb2.ChatMessage(role=_ROLES[self.role], content=self.content or "", name=self.name or "")


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool = False


class _GenerationRequest(BaseModel):
    """The fields chat completions and completions share."""

    model_config = ConfigDict(extra="ignore", strict=True)

    # OpenAI requires a model; here it defaults to letting the router choose.
    model: Text = AUTO_MODEL
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        le=2**32 - 1,
        validation_alias=AliasChoices("max_tokens", "max_completion_tokens"),
    )
    temperature: float | None = Field(default=None, ge=0, le=MAX_TEMPERATURE)
    top_p: float | None = Field(default=None, ge=0, le=MAX_TOP_P)
    stop: Annotated[list[Text], BeforeValidator(_as_list)] = Field(default_factory=list, max_length=4)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    # Clients send null for "not set" as often as they leave a field out.
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: Text | None = None
    n: int | None = 1

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(self) -> common_pb2.SamplingParams:
        # None leaves an optional proto field unset, which means the model's default.
        return common_pb2.SamplingParams(
            max_tokens=self.max_tokens or 0,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=self.stop,
            seed=self.seed,
        )


class ChatCompletionRequest(_GenerationRequest):
    messages: list[Message] = Field(min_length=1)

    def to_input(self) -> ChatInput:
        return ChatInput(
            messages=[message.to_proto() for message in self.messages],
            model=self.model,
            sampling=self.sampling(),
            user=self.user or "",
        )


class CompletionRequest(_GenerationRequest):
    prompt: Annotated[Text, BeforeValidator(_single_prompt)]

    def to_input(self) -> ChatInput:
        return ChatInput(prompt=self.prompt, model=self.model, sampling=self.sampling(), user=self.user or "")


def describe_validation_error(errors: Sequence[dict[str, Any]]) -> tuple[str, str | None]:
    """OpenAI-style message and ``param`` (e.g. ``messages[0].role``) for the first problem."""
    error = errors[0]
    if error["type"] == "json_invalid":
        return "We could not parse the JSON body of your request: " + error["ctx"]["error"], None
    # FastAPI prefixes where the value came from ("body"); OpenAI names the field alone.
    loc = [part for part in error["loc"] if part != "body"]
    param = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".") or None
    if error["type"] == "missing":
        return f"Missing required parameter: '{param}'.", param
    message = error["msg"].removeprefix("Value error, ")
    return (f"Invalid value for '{param}': {message}." if param else f"{message}."), param
