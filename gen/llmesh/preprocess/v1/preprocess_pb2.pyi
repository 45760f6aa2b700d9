from llmesh.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PreprocessRequest(_message.Message):
    __slots__ = ("context", "messages", "prompt")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    context: _common_pb2.RequestContext
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    prompt: str
    def __init__(self, context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., prompt: _Optional[str] = ...) -> None: ...

class PreprocessResponse(_message.Message):
    __slots__ = ("verdict", "prompts")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    verdict: _common_pb2.SafetyVerdict
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelPrompt]
    def __init__(self, verdict: _Optional[_Union[_common_pb2.SafetyVerdict, _Mapping]] = ..., prompts: _Optional[_Iterable[_Union[_common_pb2.ModelPrompt, _Mapping]]] = ...) -> None: ...
