from llmesh.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("context", "model", "fallback_models", "prompts", "sampling")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_MODELS_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    context: _common_pb2.RequestContext
    model: str
    fallback_models: _containers.RepeatedScalarFieldContainer[str]
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelPrompt]
    sampling: _common_pb2.SamplingParams
    def __init__(self, context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ..., model: _Optional[str] = ..., fallback_models: _Optional[_Iterable[str]] = ..., prompts: _Optional[_Iterable[_Union[_common_pb2.ModelPrompt, _Mapping]]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("model", "choices", "usage")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    model: str
    choices: _containers.RepeatedCompositeFieldContainer[_common_pb2.Completion]
    usage: _common_pb2.Usage
    def __init__(self, model: _Optional[str] = ..., choices: _Optional[_Iterable[_Union[_common_pb2.Completion, _Mapping]]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...

class GenerateStreamResponse(_message.Message):
    __slots__ = ("model", "delta", "usage")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    model: str
    delta: _common_pb2.Completion
    usage: _common_pb2.Usage
    def __init__(self, model: _Optional[str] = ..., delta: _Optional[_Union[_common_pb2.Completion, _Mapping]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("context", "model", "prompt_token_ids")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    context: _common_pb2.RequestContext
    model: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ..., model: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("model", "token_logprobs", "perplexity")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    token_logprobs: _containers.RepeatedScalarFieldContainer[float]
    perplexity: float
    def __init__(self, model: _Optional[str] = ..., token_logprobs: _Optional[_Iterable[float]] = ..., perplexity: _Optional[float] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("context", "model", "inputs")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    context: _common_pb2.RequestContext
    model: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ..., model: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("model", "embeddings", "usage")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    model: str
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    usage: _common_pb2.Usage
    def __init__(self, model: _Optional[str] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version", "state", "reason", "percent", "stable")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: str
    reason: str
    percent: int
    stable: bool
    def __init__(self, version: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., percent: _Optional[int] = ..., stable: _Optional[bool] = ...) -> None: ...

class ModelVersions(_message.Message):
    __slots__ = ("model", "versions", "split_set")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_SET_FIELD_NUMBER: _ClassVar[int]
    model: str
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    split_set: bool
    def __init__(self, model: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., split_set: _Optional[bool] = ...) -> None: ...

class ListModelVersionsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListModelVersionsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersions]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelVersions, _Mapping]]] = ...) -> None: ...

class LoadModelVersionRequest(_message.Message):
    __slots__ = ("model", "version", "model_dir")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIR_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    model_dir: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., model_dir: _Optional[str] = ...) -> None: ...

class LoadModelVersionResponse(_message.Message):
    __slots__ = ("model", "seconds")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    model: ModelVersions
    seconds: float
    def __init__(self, model: _Optional[_Union[ModelVersions, _Mapping]] = ..., seconds: _Optional[float] = ...) -> None: ...

class SetTrafficSplitRequest(_message.Message):
    __slots__ = ("model", "percent")
    class PercentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    model: str
    percent: _containers.ScalarMap[int, int]
    def __init__(self, model: _Optional[str] = ..., percent: _Optional[_Mapping[int, int]] = ...) -> None: ...

class SetTrafficSplitResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelVersions
    def __init__(self, model: _Optional[_Union[ModelVersions, _Mapping]] = ...) -> None: ...

class RollBackRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class RollBackResponse(_message.Message):
    __slots__ = ("model", "traffic_seconds", "seconds", "unloaded")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    model: ModelVersions
    traffic_seconds: float
    seconds: float
    unloaded: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model: _Optional[_Union[ModelVersions, _Mapping]] = ..., traffic_seconds: _Optional[float] = ..., seconds: _Optional[float] = ..., unloaded: _Optional[_Iterable[int]] = ...) -> None: ...

class UnloadModelVersionRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class UnloadModelVersionResponse(_message.Message):
    __slots__ = ("model", "seconds")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    model: ModelVersions
    seconds: float
    def __init__(self, model: _Optional[_Union[ModelVersions, _Mapping]] = ..., seconds: _Optional[float] = ...) -> None: ...

class ListBreakersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBreakersResponse(_message.Message):
    __slots__ = ("replica", "breakers")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    BREAKERS_FIELD_NUMBER: _ClassVar[int]
    replica: str
    breakers: _containers.RepeatedCompositeFieldContainer[Breaker]
    def __init__(self, replica: _Optional[str] = ..., breakers: _Optional[_Iterable[_Union[Breaker, _Mapping]]] = ...) -> None: ...

class Breaker(_message.Message):
    __slots__ = ("model", "state")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    model: str
    state: str
    def __init__(self, model: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...
