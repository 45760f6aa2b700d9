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

class ModerateRequest(_message.Message):
    __slots__ = ("context", "texts")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    context: _common_pb2.RequestContext
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ..., texts: _Optional[_Iterable[str]] = ...) -> None: ...

class ModerateResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ModerationResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ModerationResult, _Mapping]]] = ...) -> None: ...

class ModerationResult(_message.Message):
    __slots__ = ("flagged", "categories", "category_scores", "verdict", "text")
    class CategoriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...
    class CategoryScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_SCORES_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    flagged: bool
    categories: _containers.ScalarMap[str, bool]
    category_scores: _containers.ScalarMap[str, float]
    verdict: _common_pb2.SafetyVerdict
    text: str
    def __init__(self, flagged: _Optional[bool] = ..., categories: _Optional[_Mapping[str, bool]] = ..., category_scores: _Optional[_Mapping[str, float]] = ..., verdict: _Optional[_Union[_common_pb2.SafetyVerdict, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...
