from llmesh.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PostprocessRequest(_message.Message):
    __slots__ = ("context", "token_ids", "model", "finish_reason", "stop")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    context: _common_pb2.RequestContext
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    model: str
    finish_reason: _common_pb2.FinishReason
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ..., token_ids: _Optional[_Iterable[int]] = ..., model: _Optional[str] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class PostprocessResponse(_message.Message):
    __slots__ = ("text", "verdict", "finish_reason")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    text: str
    verdict: _common_pb2.SafetyVerdict
    finish_reason: _common_pb2.FinishReason
    def __init__(self, text: _Optional[str] = ..., verdict: _Optional[_Union[_common_pb2.SafetyVerdict, _Mapping]] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ...) -> None: ...

class PostprocessStreamRequest(_message.Message):
    __slots__ = ("context", "model", "token_ids", "finish_reason", "stop")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    context: _common_pb2.RequestContext
    model: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: _common_pb2.FinishReason
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ..., model: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class PostprocessStreamResponse(_message.Message):
    __slots__ = ("text_delta", "finish_reason", "verdict")
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    text_delta: str
    finish_reason: _common_pb2.FinishReason
    verdict: _common_pb2.SafetyVerdict
    def __init__(self, text_delta: _Optional[str] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., verdict: _Optional[_Union[_common_pb2.SafetyVerdict, _Mapping]] = ...) -> None: ...
