"""Anthropic's Messages API (POST /v1/messages) on the same pipeline.

Authenticated by ``x-api-key`` (Anthropic's clients) or ``Authorization: Bearer`` with the same
llmesh keys; answered in Anthropic's shapes, streamed as its named SSE events, and errors as
Anthropic error objects. Text content only; fields the platform does not serve (tools,
thinking, images, ...) are refused by name.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BeforeValidator, Field

from gateway.errors import GatewayError, log_failure
from gateway.openai_format import EventStream
from gateway.openai_schema import StrictModel
from gateway.records import ChatInput, ChatStream
from llmesh.common.v1 import common_pb2
from mesh.sampling import MAX_STOP_SEQUENCES, MAX_TOKENS_LIMIT

PATH = "/v1/messages"

# Anthropic's error types by HTTP status.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def error_body(status: int, message: str) -> dict:
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}


def _blocks_text(content: Any) -> Any:
    if not isinstance(content, list):
        return content
    texts = []
    for block in content:
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise ValueError("only text content blocks are supported")
        texts.append(block["text"])
    return "\n".join(texts)


class AnthropicMessage(StrictModel):
    role: Literal["user", "assistant"]
    content: Annotated[str, BeforeValidator(_blocks_text)]


class Metadata(StrictModel):
    user_id: str | None = None


class MessagesRequest(StrictModel):
    model: str
    max_tokens: int = Field(ge=1, le=MAX_TOKENS_LIMIT)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: Annotated[str | None, BeforeValidator(_blocks_text)] = None
    # Anthropic's range is 0-1.
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=MAX_STOP_SEQUENCES)
    stream: bool | None = False
    metadata: Metadata | None = None

    def to_input(self) -> ChatInput:
        roles = {"user": common_pb2.ROLE_USER, "assistant": common_pb2.ROLE_ASSISTANT}
        messages = [common_pb2.ChatMessage(role=roles[m.role], content=m.content) for m in self.messages]
        if self.system:
            messages.insert(0, common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=self.system))
        sampling = common_pb2.SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=self.stop_sequences or [],
        )
        user = self.metadata.user_id if self.metadata and self.metadata.user_id else ""
        return ChatInput(messages=messages, model=self.model, sampling=sampling, user=user)


def stop_reason(finish_reason: int, stop_sequence: str) -> str:
    if finish_reason == common_pb2.FINISH_REASON_LENGTH:
        return "max_tokens"
    if finish_reason == common_pb2.FINISH_REASON_CONTENT_FILTER:
        return "refusal"
    return "stop_sequence" if stop_sequence else "end_turn"


def _text(text: str, finish_reason: int, verdict: common_pb2.SafetyVerdict | None) -> str:
    if finish_reason == common_pb2.FINISH_REASON_CONTENT_FILTER and verdict is not None and verdict.blocked:
        return verdict.message or "The request was blocked by the content filter."
    return text


def _message_id(request_id: str) -> str:
    return "msg_" + request_id.split("-", 1)[-1]


def router() -> APIRouter:
    api = APIRouter()

    @api.post(PATH)
    async def messages(body: MessagesRequest, request: Request) -> Response:
        guard = request.app.state.guard
        header = request.headers.get("x-api-key")
        key = await guard.authenticate(f"Bearer {header}" if header else request.headers.get("authorization"))
        if not body.stream:
            result = await guard.chat(key, body.to_input())
            choice = result.choices[0]
            answer = {
                "id": _message_id(result.id),
                "type": "message",
                "role": "assistant",
                "model": result.model,
                "content": [{"type": "text", "text": _text(choice.text, choice.finish_reason, choice.verdict)}],
                "stop_reason": stop_reason(choice.finish_reason, choice.stop_sequence),
                "stop_sequence": choice.stop_sequence or None,
                "usage": {"input_tokens": result.usage.prompt_tokens, "output_tokens": result.usage.completion_tokens},
            }
            return JSONResponse(answer, headers={"x-request-id": result.id, "x-llmesh-model": result.model})
        stream = await guard.stream(key, body.to_input())
        headers = {"x-request-id": stream.id, "x-llmesh-model": stream.model}
        return EventStream(stream, _events(stream), headers)

    return api


def _event(kind: str, **fields: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields}, separators=(',', ':'))}\n\n"


async def _events(stream: ChatStream) -> AsyncIterator[str]:
    """message_start, one text block (start, deltas, stop), message_delta, message_stop; an
    error after the start is an ``error`` event, as Anthropic's API sends it."""
    yield _event(
        "message_start",
        message={
            "id": _message_id(stream.id),
            "type": "message",
            "role": "assistant",
            "model": stream.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        },
    )
    yield _event("content_block_start", index=0, content_block={"type": "text", "text": ""})
    yield _event("ping")
    try:
        async for chunk in stream:
            text = _text(chunk.text, chunk.finish_reason, chunk.verdict)
            if text:
                yield _event("content_block_delta", index=0, delta={"type": "text_delta", "text": text})
            if chunk.usage is None:
                continue
            yield _event("content_block_stop", index=0)
            yield _event(
                "message_delta",
                delta={
                    "stop_reason": stop_reason(chunk.finish_reason, chunk.stop_sequence),
                    "stop_sequence": chunk.stop_sequence or None,
                },
                usage={"input_tokens": chunk.usage.prompt_tokens, "output_tokens": chunk.usage.completion_tokens},
            )
            yield _event("message_stop")
    except GatewayError as error:
        log_failure(error, request_id=stream.id)
        yield _event("error", error=error_body(error.http_status, error.message)["error"])
