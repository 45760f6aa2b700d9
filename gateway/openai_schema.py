"""OpenAI's request bodies as pydantic models, and their translation to the pipeline's input.

Every field OpenAI defines for these endpoints is either served or refused by name: the models
forbid fields they do not declare (a 400 naming the field), and a declared field whose value
asks for something the platform cannot do (``echo: true``, ``best_of`` above ``n``) is refused
by its validator. A parameter silently ignored would make the caller believe it got what it
asked for.

Types are strict: ``"stream": "yes"``, ``"max_tokens": "5"`` or ``"temperature": true`` are
refused rather than coerced, since a client that sends them has a bug worth hearing about.
Every string must be valid Unicode: JSON's ``\ud800`` escapes decode to lone surrogates, which
no protobuf string (and no tokenizer) can carry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from gateway.errors import InvalidRequest
from gateway.openai_format import ChatFormat, CompletionFormat
from gateway.records import ChatInput
from llmesh.common.v1 import common_pb2
from mesh.catalog import AUTO_MODEL
from mesh.sampling import (
    MAX_COMPLETION_LOGPROBS,
    MAX_LOGIT_BIAS,
    MAX_N,
    MAX_PENALTY,
    MAX_STOP_SEQUENCES,
    MAX_TEMPERATURE,
    MAX_TOKENS_LIMIT,
    MAX_TOP_LOGPROBS,
)

_ROLES = {
    "system": common_pb2.ROLE_SYSTEM,
    # OpenAI's newer name for system messages.
    "developer": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
    "tool": common_pb2.ROLE_TOOL,
    # The deprecated functions API's result message.
    "function": common_pb2.ROLE_TOOL,
}


def _lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in a string, or in the strings of a list or an object."""
    if isinstance(value, str):
        return next(
            (f"U+{ord(c):04X} at character {i}" for i, c in enumerate(value) if "\ud800" <= c <= "\udfff"), None
        )
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list | tuple):
        return next((found for item in value if (found := _lone_surrogate(item)) is not None), None)
    return None


class StrictModel(BaseModel):
    """A request object that refuses fields it does not declare, coerces no type and carries
    only valid Unicode."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        found = _lone_surrogate(value)
        if found is not None:
            raise ValueError(f"the string has a lone surrogate ({found})")
        return value


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


class FunctionCall(StrictModel):
    name: str
    arguments: str = ""


class ToolCall(StrictModel):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall

    def to_proto(self) -> common_pb2.ToolCall:
        return common_pb2.ToolCall(id=self.id, name=self.function.name, arguments=self.function.arguments)


class Message(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Annotated[str | None, BeforeValidator(_text_of)] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # The deprecated functions API's form of an assistant's call.
    function_call: FunctionCall | None = None
    # Echoed back by clients that pass earlier answers on as they got them.
    refusal: str | None = None

    def to_proto(self) -> common_pb2.ChatMessage:
        calls = [call.to_proto() for call in self.tool_calls or []]
        if self.function_call is not None:
            calls.append(common_pb2.ToolCall(name=self.function_call.name, arguments=self.function_call.arguments))
        return common_pb2.ChatMessage(
            role=_ROLES[self.role],
            content=self.content or "",
            name=self.name or "",
            tool_calls=calls,
            tool_call_id=self.tool_call_id or "",
        )


class StreamOptions(StrictModel):
    include_usage: bool = False


class FunctionDefinition(StrictModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str = ""
    parameters: dict[str, Any] | None = None
    # Calls always follow the schema here (guided decoding), which is what strict asks for.
    strict: bool | None = None

    def to_proto(self) -> common_pb2.Tool:
        parameters = json.dumps(self.parameters) if self.parameters is not None else ""
        return common_pb2.Tool(name=self.name, description=self.description, parameters_json=parameters)


class Tool(StrictModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(StrictModel):
    name: str


class NamedToolChoice(StrictModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(StrictModel):
    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    # OpenAI allows a missing schema (any JSON); guided decoding then only keeps to JSON.
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(StrictModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError("json_schema is only for type json_schema")
        return self

    def to_proto(self) -> common_pb2.StructuredOutput:
        if self.type == "json_object":
            return common_pb2.StructuredOutput(json_object=True)
        if self.type == "json_schema" and self.json_schema is not None:  # the validator pairs them
            schema = self.json_schema.schema_
            if schema is None:
                return common_pb2.StructuredOutput(json_object=True)
            return common_pb2.StructuredOutput(json_schema=json.dumps(schema))
        return common_pb2.StructuredOutput()


def _logit_bias_keys(value: Any) -> Any:
    if isinstance(value, dict):
        for key in value:
            if not str(key).lstrip("-").isdigit():
                raise ValueError(f"keys are token ids; got {key!r}")
    return value


class _GenerationRequest(StrictModel):
    """The fields chat completions and completions share."""

    # OpenAI requires a model; here it defaults to letting the router choose.
    model: str = AUTO_MODEL
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0, le=MAX_TEMPERATURE)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: Annotated[list[str], BeforeValidator(_as_list)] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    # Clients send null for "not set" as often as they leave a field out.
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    presence_penalty: float | None = Field(default=None, ge=-MAX_PENALTY, le=MAX_PENALTY)
    frequency_penalty: float | None = Field(default=None, ge=-MAX_PENALTY, le=MAX_PENALTY)
    logit_bias: Annotated[dict[str, float] | None, BeforeValidator(_logit_bias_keys)] = None

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS or int(token) < 0:
                raise ValueError(f"biases are between -100 and 100 for token ids >= 0; got {token}: {bias}")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def wants_logprobs(self) -> bool:
        raise NotImplementedError

    def sampling(self) -> common_pb2.SamplingParams:
        # None leaves an optional proto field unset, which means the model's default.
        return common_pb2.SamplingParams(
            max_tokens=self.max_tokens or 0,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=self.stop,
            seed=self.seed,
            n=self.n or 0,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias={int(token): bias for token, bias in (self.logit_bias or {}).items()},
        )


class ChatCompletionRequest(_GenerationRequest):
    messages: list[Message] = Field(min_length=1)
    # OpenAI's newer name for max_tokens.
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    # One call per answer at most (gateway/tools.py); both values allow that.
    parallel_tool_calls: bool | None = None
    # The deprecated functions API.
    functions: list[FunctionDefinition] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None

    def _check(self) -> None:
        """Parameters that contradict each other, refused naming the one to drop."""
        if self.max_tokens and self.max_completion_tokens and self.max_tokens != self.max_completion_tokens:
            raise InvalidRequest("max_tokens and max_completion_tokens differ; send one of them.", param="max_tokens")
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: true.", param="top_logprobs")
        if self.tools and self.functions:
            raise InvalidRequest("Send tools or functions, not both.", param="functions")
        if self.tool_choice is not None and self.functions:
            raise InvalidRequest("tool_choice goes with tools; functions take function_call.", param="tool_choice")
        if self.function_call is not None and self.tools:
            raise InvalidRequest("function_call goes with functions; tools take tool_choice.", param="function_call")

    @property
    def wants_logprobs(self) -> bool:
        return bool(self.logprobs)

    @property
    def legacy_functions(self) -> bool:
        return bool(self.functions)

    def _tools(self) -> tuple[list[common_pb2.Tool], common_pb2.ToolChoice]:
        definitions = [tool.function for tool in self.tools or []] + list(self.functions or [])
        choice = self.tool_choice if self.tools else self.function_call
        modes = {
            None: common_pb2.TOOL_CHOICE_MODE_UNSPECIFIED,
            "auto": common_pb2.TOOL_CHOICE_MODE_AUTO,
            "none": common_pb2.TOOL_CHOICE_MODE_NONE,
            "required": common_pb2.TOOL_CHOICE_MODE_REQUIRED,
        }
        if isinstance(choice, NamedToolChoice | NamedFunction):
            name = choice.function.name if isinstance(choice, NamedToolChoice) else choice.name
            tool_choice = common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_FUNCTION, function_name=name)
        else:
            tool_choice = common_pb2.ToolChoice(mode=modes[choice])
        return [definition.to_proto() for definition in definitions], tool_choice

    def sampling(self) -> common_pb2.SamplingParams:
        sampling = super().sampling()
        sampling.max_tokens = self.max_completion_tokens or self.max_tokens or 0
        sampling.logprobs = bool(self.logprobs)
        sampling.top_logprobs = self.top_logprobs or 0
        if self.response_format is not None:
            sampling.structured_output.CopyFrom(self.response_format.to_proto())
        return sampling

    def answer_format(self) -> ChatFormat:
        """How this request's answers are written (the REST edge and the batch worker alike)."""
        return ChatFormat(logprobs=self.wants_logprobs, legacy_functions=self.legacy_functions)

    def to_input(self) -> ChatInput:
        self._check()
        tools, tool_choice = self._tools()
        return ChatInput(
            messages=[message.to_proto() for message in self.messages],
            model=self.model,
            sampling=self.sampling(),
            user=self.user or "",
            tools=tools,
            tool_choice=tool_choice,
        )


class CompletionRequest(_GenerationRequest):
    prompt: Annotated[str, BeforeValidator(_single_prompt)]
    # The legacy form: how many alternatives per token (0-5); 0 still reports each token's own.
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=MAX_N)

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("echo is not supported")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix (insertion) is not supported")
        return value

    def _check(self) -> None:
        # vLLM's v1 engine has no best_of: generating more answers than are returned and
        # keeping the most likely is not something the engine can do.
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise InvalidRequest("best_of other than n is not supported.", param="best_of")

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs is not None

    def sampling(self) -> common_pb2.SamplingParams:
        sampling = super().sampling()
        sampling.logprobs = self.logprobs is not None
        sampling.top_logprobs = self.logprobs or 0
        return sampling

    def answer_format(self) -> CompletionFormat:
        return CompletionFormat(logprobs=self.wants_logprobs)

    def to_input(self) -> ChatInput:
        self._check()
        return ChatInput(prompt=self.prompt, model=self.model, sampling=self.sampling(), user=self.user or "")


def _texts(value: Any) -> Any:
    """A string or a list of strings; token-id inputs are refused (each model tokenizes itself)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value
    if isinstance(value, list) and value and all(isinstance(item, int | list) for item in value):
        raise ValueError("token ids as input are not supported; send text")
    return value


class EmbeddingRequest(StrictModel):
    model: str
    input: Annotated[list[str], BeforeValidator(_texts)] = Field(min_length=1, max_length=2048)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


def _moderation_texts(value: Any) -> Any:
    """Text, a list of texts, or a list of text parts (image parts are refused)."""
    if isinstance(value, list) and value and all(isinstance(part, dict) for part in value):
        texts = []
        for part in value:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text inputs are supported")
            texts.append(part["text"])
        return texts
    return _texts(value)


MODERATION_MODEL = "llmesh-guard"


class ModerationRequest(StrictModel):
    input: Annotated[list[str], BeforeValidator(_moderation_texts)] = Field(min_length=1, max_length=256)
    # llmesh's own guard answers every moderation; it is the only model.
    model: Literal["llmesh-guard"] | None = None


def _param(loc: Sequence[Any]) -> str | None:
    # FastAPI prefixes where the value came from ("body"); OpenAI names the field alone.
    parts = [part for part in loc if part != "body"]
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts).lstrip(".") or None


def unsupported_parameter(param: str) -> str:
    """The refusal of a parameter the platform does not serve: the same words on every endpoint."""
    return f"Unsupported parameter: '{param}' is not supported by this server."


def describe_validation_error(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """OpenAI-style message and ``param`` (e.g. ``messages[0].role``) for the first problem."""
    error = errors[0]
    if error["type"] == "json_invalid":
        return "We could not parse the JSON body of your request: " + error["ctx"]["error"], None
    loc = list(error["loc"])
    # A union's error names the member that failed (e.g. tool_choice.NamedToolChoice): the
    # caller only knows the field.
    loc = [
        part
        for part in loc
        if not (isinstance(part, str) and (part[:1].isupper() or part.startswith(("literal[", "function-"))))
    ]
    param = _param(loc)
    if error["type"] == "missing":
        return f"Missing required parameter: '{param}'.", param
    if error["type"] == "extra_forbidden" and param:
        return unsupported_parameter(param), param
    message = error["msg"].removeprefix("Value error, ")
    return (f"Invalid value for '{param}': {message}." if param else f"{message}."), param
