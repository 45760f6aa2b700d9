from llmesh.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RouteRequest(_message.Message):
    __slots__ = ("context", "prompts", "requested_model", "stream")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_MODEL_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    context: _common_pb2.RequestContext
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelPrompt]
    requested_model: str
    stream: bool
    def __init__(self, context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ..., prompts: _Optional[_Iterable[_Union[_common_pb2.ModelPrompt, _Mapping]]] = ..., requested_model: _Optional[str] = ..., stream: _Optional[bool] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("model", "fallback_models", "reason", "policy", "signals", "cascade")
    class SignalsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_MODELS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    CASCADE_FIELD_NUMBER: _ClassVar[int]
    model: str
    fallback_models: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    policy: str
    signals: _containers.ScalarMap[str, float]
    cascade: Cascade
    def __init__(self, model: _Optional[str] = ..., fallback_models: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., policy: _Optional[str] = ..., signals: _Optional[_Mapping[str, float]] = ..., cascade: _Optional[_Union[Cascade, _Mapping]] = ...) -> None: ...

class Cascade(_message.Message):
    __slots__ = ("escalate_model", "min_mean_logprob")
    ESCALATE_MODEL_FIELD_NUMBER: _ClassVar[int]
    MIN_MEAN_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    escalate_model: str
    min_mean_logprob: float
    def __init__(self, escalate_model: _Optional[str] = ..., min_mean_logprob: _Optional[float] = ...) -> None: ...
