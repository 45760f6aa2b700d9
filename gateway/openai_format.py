"""OpenAI's response shapes: completion objects, stream chunks, errors and SSE framing.

Chat completions and (legacy) completions differ only in how a choice looks, so one event
generator drives both through a small format object.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError, log_failure
from gateway.records import ChatResult, ChatStream, StreamChunk, finish_reason_name
from llmesh.common.v1 import common_pb2

log = logging.getLogger(__name__)

DONE = "[DONE]"
# Shown when a verdict has no message of its own.
_DEFAULT_REFUSAL = "The request was blocked by the content filter."


def usage_object(usage: common_pb2.Usage | None) -> dict[str, int]:
    usage = usage or common_pb2.Usage()
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
    }


def error_object(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def gateway_error_object(error: GatewayError) -> dict:
    return error_object(error.message, error.error_type, error.param, error.code)


def sse(data: dict | str) -> str:
    payload = data if isinstance(data, str) else orjson.dumps(data).decode()
    return f"data: {payload}\n\n"


class FastJSONResponse(JSONResponse):
    """A JSON response encoded by orjson (compact, UTF-8, several times json's speed): the
    answers of the generation endpoints, on every request's path."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _refusal(verdict: common_pb2.SafetyVerdict | None) -> str | None:
    if verdict is None or not verdict.blocked:
        return None
    return verdict.message or _DEFAULT_REFUSAL


def chat_logprobs(entries) -> dict | None:
    """OpenAI's chat ``logprobs`` object from released entries (None when none were asked for)."""
    return {
        "content": [
            {
                "token": entry.token,
                "logprob": entry.logprob,
                "bytes": list(entry.bytes),
                "top_logprobs": [
                    {"token": alt.token, "logprob": alt.logprob, "bytes": list(alt.bytes)} for alt in entry.top_logprobs
                ],
            }
            for entry in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries, offset: int = 0) -> dict:
    """The legacy completions ``logprobs`` object; ``offset``: characters released before."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": [entry.token for entry in entries],
        "token_logprobs": [entry.logprob for entry in entries],
        "top_logprobs": [{alt.token: alt.logprob for alt in entry.top_logprobs} for entry in entries],
        "text_offset": offsets,
    }


class ResponseFormat:
    """How one endpoint's answers look; the SSE event sequence is shared."""

    chunk_object: str

    def __init__(self, logprobs: bool = False) -> None:
        self.logprobs = logprobs

    def result(self, result: ChatResult) -> dict:
        raise NotImplementedError

    def first_chunks(self, stream: ChatStream, answers: int) -> list[dict]:
        return []

    def chunks(self, stream: ChatStream, chunk: StreamChunk) -> list[dict]:
        """The chunks one pipeline chunk becomes (its text, then its end)."""
        raise NotImplementedError

    def usage_chunk(self, stream: ChatStream, usage: common_pb2.Usage | None) -> dict:
        return self._chunk(stream, [], usage=usage_object(usage))

    def _chunk(self, stream: ChatStream, choices: list[dict], **extra: Any) -> dict:
        return {
            "id": stream.id,
            "object": self.chunk_object,
            "created": stream.created,
            "model": stream.model,
            "choices": choices,
            **extra,
        }


def _finish(reason: int | None) -> str | None:
    return finish_reason_name(reason) if reason else None


class ChatFormat(ResponseFormat):
    chunk_object = "chat.completion.chunk"

    def __init__(self, logprobs: bool = False, legacy_functions: bool = False) -> None:
        super().__init__(logprobs)
        # The request used `functions` (deprecated): calls are answered as `function_call`.
        self.legacy_functions = legacy_functions

    def _finish_reason(self, reason: int | None) -> str | None:
        if self.legacy_functions and reason == common_pb2.FINISH_REASON_TOOL_CALLS:
            return "function_call"
        return _finish(reason)

    def _calls(self, calls, streamed: bool) -> dict:
        if not calls:
            return {}
        if self.legacy_functions:
            return {"function_call": {"name": calls[0].name, "arguments": calls[0].arguments}}
        return {
            "tool_calls": [
                {
                    **({"index": position} if streamed else {}),
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for position, call in enumerate(calls)
            ]
        }

    def _choice(self, index: int, delta: dict, finish_reason: int | None = None, entries=()) -> dict:
        return {
            "index": index,
            "delta": delta,
            "logprobs": chat_logprobs(entries) if self.logprobs and entries else None,
            "finish_reason": self._finish_reason(finish_reason),
        }

    def result(self, result: ChatResult) -> dict:
        choices = []
        for choice in result.choices:
            message = {
                "role": "assistant",
                "content": None if choice.tool_calls else choice.text,
                "refusal": _refusal(choice.verdict),
                **self._calls(choice.tool_calls, streamed=False),
            }
            choices.append(
                {
                    "index": choice.index,
                    "message": message,
                    "logprobs": chat_logprobs(choice.logprobs) if self.logprobs else None,
                    "finish_reason": self._finish_reason(choice.finish_reason),
                }
            )
        return {
            "id": result.id,
            "object": "chat.completion",
            "created": result.created,
            "model": result.model,
            "choices": choices,
            "usage": usage_object(result.usage),
        }

    def first_chunks(self, stream: ChatStream, answers: int) -> list[dict]:
        return [
            self._chunk(stream, [self._choice(index, {"role": "assistant", "content": ""})]) for index in range(answers)
        ]

    def chunks(self, stream: ChatStream, chunk: StreamChunk) -> list[dict]:
        out = []
        if chunk.text or chunk.logprobs:
            out.append(
                self._chunk(stream, [self._choice(chunk.index, {"content": chunk.text}, entries=chunk.logprobs)])
            )
        if chunk.tool_calls:
            # OpenAI's shape: the call's id and name first, then its arguments as they come
            # (here in one piece: the answer is read whole).
            opening = self._calls(chunk.tool_calls, streamed=True)
            key = next(iter(opening))
            # One call (legacy functions) or a list of them, under the same key.
            named: dict[str, Any]
            arguments: dict[str, Any]
            if self.legacy_functions:
                named = {key: {**opening[key], "arguments": ""}}
                arguments = {key: {"arguments": opening[key]["arguments"]}}
            else:
                named = {key: [{**call, "function": {**call["function"], "arguments": ""}} for call in opening[key]]}
                arguments = {
                    key: [
                        {"index": call["index"], "function": {"arguments": call["function"]["arguments"]}}
                        for call in opening[key]
                    ]
                }
            out.append(self._chunk(stream, [self._choice(chunk.index, named)]))
            out.append(self._chunk(stream, [self._choice(chunk.index, arguments)]))
        if chunk.finish_reason:
            refusal = _refusal(chunk.verdict)
            delta = {"refusal": refusal} if refusal else {}
            out.append(self._chunk(stream, [self._choice(chunk.index, delta, chunk.finish_reason)]))
        return out


class CompletionFormat(ResponseFormat):
    chunk_object = "text_completion"

    def __init__(self, logprobs: bool = False) -> None:
        super().__init__(logprobs)
        # Characters released so far per answer, for the streamed logprobs' text_offset.
        self._offsets: dict[int, int] = {}

    def _choice(self, index: int, text: str, finish_reason: int | None = None, entries=None, offset: int = 0) -> dict:
        return {
            "text": text,
            "index": index,
            "logprobs": completion_logprobs(entries, offset) if self.logprobs and entries is not None else None,
            "finish_reason": _finish(finish_reason),
        }

    def result(self, result: ChatResult) -> dict:
        return {
            "id": result.id,
            "object": "text_completion",
            "created": result.created,
            "model": result.model,
            "choices": [
                self._choice(choice.index, choice.text, choice.finish_reason, list(choice.logprobs))
                for choice in result.choices
            ],
            "usage": usage_object(result.usage),
        }

    def chunks(self, stream: ChatStream, chunk: StreamChunk) -> list[dict]:
        out = []
        if chunk.text or chunk.logprobs:
            offset = self._offsets.get(chunk.index, 0)
            self._offsets[chunk.index] = offset + len(chunk.text)
            out.append(
                self._chunk(
                    stream, [self._choice(chunk.index, chunk.text, entries=list(chunk.logprobs), offset=offset)]
                )
            )
        if chunk.finish_reason:
            out.append(self._chunk(stream, [self._choice(chunk.index, "", chunk.finish_reason)]))
        return out


async def sse_events(stream: ChatStream, fmt: ResponseFormat, include_usage: bool) -> AsyncIterator[str]:
    """The SSE body of a streaming answer: each answer's chunks and final chunk, optional
    usage, [DONE].

    An error after the first event can no longer change the HTTP status, so it is sent as an
    error event (which OpenAI's clients raise) and the stream ends without [DONE].
    """
    try:
        for first in fmt.first_chunks(stream, stream.answers):
            yield sse(first)
        async for chunk in stream:
            for event in fmt.chunks(stream, chunk):
                yield sse(event)
            if chunk.usage is not None and include_usage:
                yield sse(fmt.usage_chunk(stream, chunk.usage))
    except GatewayError as error:
        log_failure(error, request_id=stream.id)
        yield sse(gateway_error_object(error))
        return
    except Exception:
        log.exception("stream failed", extra={"request_id": stream.id})
        yield sse(gateway_error_object(GatewayError("The stream failed; please retry.")))
        return
    yield sse(DONE)


class EventStream(StreamingResponse):
    """An SSE response that releases the pipeline stream however the response ends: the
    body iterator's own clean-up never runs if the client leaves before its first step."""

    def __init__(self, stream: ChatStream, events: AsyncIterator[str], headers: dict[str, str]) -> None:
        super().__init__(events, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.stream.aclose()
