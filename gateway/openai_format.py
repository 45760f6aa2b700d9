"""OpenAI's response shapes: completion objects, stream chunks, errors and SSE framing.

Chat completions and (legacy) completions differ only in how a choice looks, so one event
generator drives both through a small format object.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from gateway.errors import GatewayError, log_failure
from gateway.pipeline import ChatResult, ChatStream, StreamChunk, finish_reason_name
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
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"


def _refusal(verdict: common_pb2.SafetyVerdict | None) -> str | None:
    if verdict is None or not verdict.blocked:
        return None
    return verdict.message or _DEFAULT_REFUSAL


class ResponseFormat:
    """How one endpoint's answers look; the SSE event sequence is shared."""

    chunk_object: str

    def result(self, result: ChatResult) -> dict:
        raise NotImplementedError

    def first_chunk(self, stream: ChatStream) -> dict | None:
        return None

    def delta_chunk(self, stream: ChatStream, text: str) -> dict:
        raise NotImplementedError

    def final_chunk(self, stream: ChatStream, chunk: StreamChunk) -> dict:
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


def _chat_choice(delta: dict, finish_reason: int | None = None) -> dict:
    return {
        "index": 0,
        "delta": delta,
        "logprobs": None,
        "finish_reason": finish_reason_name(finish_reason) if finish_reason else None,
    }


class ChatFormat(ResponseFormat):
    chunk_object = "chat.completion.chunk"

    def result(self, result: ChatResult) -> dict:
        message = {"role": "assistant", "content": result.text, "refusal": _refusal(result.verdict)}
        return {
            "id": result.id,
            "object": "chat.completion",
            "created": result.created,
            "model": result.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason_name(result.finish_reason),
                }
            ],
            "usage": usage_object(result.usage),
        }

    def first_chunk(self, stream: ChatStream) -> dict:
        return self._chunk(stream, [_chat_choice({"role": "assistant", "content": ""})])

    def delta_chunk(self, stream: ChatStream, text: str) -> dict:
        return self._chunk(stream, [_chat_choice({"content": text})])

    def final_chunk(self, stream: ChatStream, chunk: StreamChunk) -> dict:
        refusal = _refusal(chunk.verdict)
        delta = {"refusal": refusal} if refusal else {}
        return self._chunk(stream, [_chat_choice(delta, chunk.finish_reason)])


def _text_choice(text: str, finish_reason: int | None = None) -> dict:
    return {
        "text": text,
        "index": 0,
        "logprobs": None,
        "finish_reason": finish_reason_name(finish_reason) if finish_reason else None,
    }


class CompletionFormat(ResponseFormat):
    chunk_object = "text_completion"

    def result(self, result: ChatResult) -> dict:
        return {
            "id": result.id,
            "object": "text_completion",
            "created": result.created,
            "model": result.model,
            "choices": [_text_choice(result.text, result.finish_reason)],
            "usage": usage_object(result.usage),
        }

    def delta_chunk(self, stream: ChatStream, text: str) -> dict:
        return self._chunk(stream, [_text_choice(text)])

    def final_chunk(self, stream: ChatStream, chunk: StreamChunk) -> dict:
        return self._chunk(stream, [_text_choice("", chunk.finish_reason)])


CHAT = ChatFormat()
COMPLETION = CompletionFormat()


async def sse_events(stream: ChatStream, fmt: ResponseFormat, include_usage: bool) -> AsyncIterator[str]:
    """The SSE body of a streaming answer: chunks, the final chunk, optional usage, [DONE].

    An error after the first event can no longer change the HTTP status, so it is sent as an
    error event (which OpenAI's clients raise) and the stream ends without [DONE].
    """
    try:
        first = fmt.first_chunk(stream)
        if first is not None:
            yield sse(first)
        async for chunk in stream:
            if chunk.text:
                yield sse(fmt.delta_chunk(stream, chunk.text))
            if chunk.finish_reason:
                yield sse(fmt.final_chunk(stream, chunk))
                if include_usage:
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
