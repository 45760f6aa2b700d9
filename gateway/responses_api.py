"""OpenAI's Responses API (POST /v1/responses, GET /v1/responses/{id}) on the same pipeline.

Text in, text out: ``input`` (a string or messages with text parts) and ``instructions`` become
the conversation; the answer is one output message. With ``store`` (the default) the whole
conversation is kept in Redis under the caller's tenant, so ``previous_response_id`` continues it
and another tenant can never read or continue it. Fields the platform does not serve (tools,
reasoning, ...) are refused by name, like everywhere else.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BeforeValidator, Field
from redis.exceptions import RedisError

from gateway.errors import GatewayError, InvalidRequest, RedisUnavailable, log_failure
from gateway.keys_api import api_key
from gateway.openai_format import EventStream
from gateway.openai_schema import StrictModel
from gateway.records import ChatInput, ChatResult, ChatStream
from gateway.tenancy import ApiKey
from llmesh.common.v1 import common_pb2
from mesh.catalog import AUTO_MODEL
from mesh.sampling import MAX_TEMPERATURE, MAX_TOKENS_LIMIT

_KEY = "llmesh:responses:"
_ROLES = {
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
    "system": common_pb2.ROLE_SYSTEM,
    "developer": common_pb2.ROLE_SYSTEM,
}
_ROLE_NAMES = {common_pb2.ROLE_USER: "user", common_pb2.ROLE_ASSISTANT: "assistant", common_pb2.ROLE_SYSTEM: "system"}


def _parts_text(content: Any) -> Any:
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text"):
            raise ValueError("only text parts (input_text, output_text) are supported")
        if not isinstance(part.get("text"), str):
            raise ValueError("a text part needs its text")
        texts.append(part["text"])
    return "\n".join(texts)


class InputMessage(StrictModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Annotated[str, BeforeValidator(_parts_text)]
    # Clients replaying earlier output send these back.
    id: str | None = None
    status: str | None = None


class TextFormat(StrictModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    description: str = ""
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextOptions(StrictModel):
    format: TextFormat = Field(default_factory=TextFormat)


class ResponseRequest(StrictModel):
    model: str = AUTO_MODEL
    input: str | list[InputMessage]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0, le=MAX_TEMPERATURE)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stream: bool | None = False
    previous_response_id: str | None = None
    store: bool | None = True
    user: str | None = None
    metadata: dict[str, str] | None = None
    text: TextOptions | None = None

    def messages(self, history: list[dict]) -> list[common_pb2.ChatMessage]:
        items = [InputMessage(role="user", content=self.input)] if isinstance(self.input, str) else self.input
        conversation = [common_pb2.ChatMessage(role=_ROLES[m["role"]], content=m["content"]) for m in history]
        conversation += [common_pb2.ChatMessage(role=_ROLES[item.role], content=item.content) for item in items]
        if self.instructions:
            # Instructions hold for this response only, as OpenAI's do.
            conversation.insert(0, common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=self.instructions))
        return conversation

    def structured_output(self) -> common_pb2.StructuredOutput:
        fmt = self.text.format if self.text else TextFormat()
        if fmt.type == "json_object" or (fmt.type == "json_schema" and fmt.schema_ is None):
            return common_pb2.StructuredOutput(json_object=True)
        if fmt.type == "json_schema":
            return common_pb2.StructuredOutput(json_schema=json.dumps(fmt.schema_))
        return common_pb2.StructuredOutput()


class ResponseStore:
    """Conversations by response id, per tenant, in Redis."""

    def __init__(self, redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    async def load(self, tenant: str, response_id: str) -> dict:
        try:
            raw = await self.redis.get(f"{_KEY}{tenant}:{response_id}")
        except RedisError as error:
            raise RedisUnavailable("The response store is unavailable; please retry.") from error
        if raw is None:
            raise InvalidRequest(
                f"No stored response '{response_id}'.", param="previous_response_id", reason="NOT_FOUND"
            )
        return json.loads(raw)

    async def save(self, tenant: str, record: dict) -> None:
        try:
            await self.redis.set(f"{_KEY}{tenant}:{record['response']['id']}", json.dumps(record), ex=self.ttl_s)
        except RedisError as error:
            raise RedisUnavailable("The response store is unavailable; please retry.") from error


def _usage(usage: common_pb2.Usage | None) -> dict:
    usage = usage or common_pb2.Usage()
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def _content(text: str, finish_reason: int, verdict: common_pb2.SafetyVerdict | None) -> list[dict]:
    if finish_reason == common_pb2.FINISH_REASON_CONTENT_FILTER and verdict is not None and verdict.blocked:
        return [{"type": "refusal", "refusal": verdict.message or "The request was blocked by the content filter."}]
    return [{"type": "output_text", "text": text, "annotations": []}]


def _status(finish_reason: int) -> tuple[str, dict | None]:
    if finish_reason == common_pb2.FINISH_REASON_LENGTH:
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == common_pb2.FINISH_REASON_CONTENT_FILTER:
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


class _Shape:
    """The response object of one request, filled in as it goes."""

    def __init__(self, body: ResponseRequest, model: str) -> None:
        self.id = f"resp_{uuid.uuid4().hex}"
        self.message_id = f"msg_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.body = body
        self.model = model

    def message(self, text: str, finish_reason: int, verdict, status: str = "completed") -> dict:
        return {
            "type": "message",
            "id": self.message_id,
            "status": status,
            "role": "assistant",
            "content": _content(text, finish_reason, verdict) if status != "in_progress" else [],
        }

    def response(self, output: list[dict], status: str, incomplete: dict | None, usage: dict | None) -> dict:
        fmt = self.body.text.format.model_dump(by_alias=True, exclude_none=True) if self.body.text else {"type": "text"}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": self.body.instructions,
            "max_output_tokens": self.body.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": False,
            "previous_response_id": self.body.previous_response_id,
            "store": self.body.store is not False,
            "temperature": self.body.temperature,
            "text": {"format": fmt},
            "tool_choice": "none",
            "tools": [],
            "top_p": self.body.top_p,
            "truncation": "disabled",
            "usage": usage,
            "user": self.body.user,
            "metadata": self.body.metadata or {},
        }


def router(response_ttl_s: int) -> APIRouter:
    api = APIRouter()

    def store(request: Request) -> ResponseStore:
        return ResponseStore(request.app.state.guard.tenancy.redis, response_ttl_s)

    @api.post("/v1/responses")
    async def create(body: ResponseRequest, request: Request, key: ApiKey = Depends(api_key)) -> Response:
        responses = store(request)
        history = (
            (await responses.load(key.tenant, body.previous_response_id))["messages"]
            if body.previous_response_id
            else []
        )
        messages = body.messages(history)
        sampling = common_pb2.SamplingParams(
            max_tokens=body.max_output_tokens or 0, temperature=body.temperature, top_p=body.top_p
        )
        sampling.structured_output.CopyFrom(body.structured_output())
        chat = ChatInput(messages=messages, model=body.model, sampling=sampling, user=body.user or "")
        # What is kept for a follow-up: the conversation without this response's instructions.
        kept = [{"role": _ROLE_NAMES[m.role], "content": m.content} for m in messages[1 if body.instructions else 0 :]]
        guard = request.app.state.guard
        if not body.stream:
            result: ChatResult = await guard.chat(key, chat)
            shape = _Shape(body, result.model)
            status, incomplete = _status(result.finish_reason)
            answer = shape.response(
                [shape.message(result.text, result.finish_reason, result.verdict)],
                status,
                incomplete,
                _usage(result.usage),
            )
            if body.store is not False:
                await responses.save(key.tenant, {"response": answer, "messages": [*kept, _said(result.text)]})
            return JSONResponse(answer, headers={"x-request-id": result.id, "x-llmesh-model": result.model})
        stream = await guard.stream(key, chat)
        shape = _Shape(body, stream.model)
        events = _events(stream, shape, responses if body.store is not False else None, key.tenant, kept)
        return EventStream(stream, events, {"x-request-id": stream.id, "x-llmesh-model": stream.model})

    @api.get("/v1/responses/{response_id}")
    async def retrieve(response_id: str, request: Request, key: ApiKey = Depends(api_key)) -> dict:
        try:
            return (await store(request).load(key.tenant, response_id))["response"]
        except InvalidRequest as error:
            raise GatewayNotFound(str(error)) from None

    return api


class GatewayNotFound(GatewayError):
    http_status = 404
    error_type = "invalid_request_error"
    reason = "NOT_FOUND"


def _said(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _event(kind: str, sequence: int, **fields: Any) -> str:
    payload = json.dumps({"type": kind, "sequence_number": sequence, **fields}, separators=(",", ":"))
    return f"event: {kind}\ndata: {payload}\n\n"


async def _events(
    stream: ChatStream, shape: _Shape, responses: ResponseStore | None, tenant: str, kept: list[dict]
) -> AsyncIterator[str]:
    """Response streaming events in OpenAI's order; an error after the start is an ``error``
    event (OpenAI's clients raise it)."""
    sequence = iter(range(1 << 30))
    text = []
    started = shape.response([], "in_progress", None, None)
    yield _event("response.created", next(sequence), response=started)
    yield _event("response.in_progress", next(sequence), response=started)
    item = shape.message("", 0, None, status="in_progress")
    yield _event("response.output_item.added", next(sequence), output_index=0, item=item)
    part = {"type": "output_text", "text": "", "annotations": []}
    where = {"item_id": shape.message_id, "output_index": 0, "content_index": 0}
    yield _event("response.content_part.added", next(sequence), **where, part=part)
    try:
        async for chunk in stream:
            if chunk.text:
                text.append(chunk.text)
                yield _event("response.output_text.delta", next(sequence), **where, delta=chunk.text)
            if chunk.usage is None:
                continue
            full = "".join(text)
            yield _event("response.output_text.done", next(sequence), **where, text=full)
            yield _event("response.content_part.done", next(sequence), **where, part={**part, "text": full})
            done = shape.message(full, chunk.finish_reason, chunk.verdict)
            yield _event("response.output_item.done", next(sequence), output_index=0, item=done)
            status, incomplete = _status(chunk.finish_reason)
            answer = shape.response([done], status, incomplete, _usage(chunk.usage))
            if responses is not None:
                await responses.save(tenant, {"response": answer, "messages": [*kept, _said(full)]})
            kind = "response.completed" if status == "completed" else "response.incomplete"
            yield _event(kind, next(sequence), response=answer)
    except GatewayError as error:
        log_failure(error, request_id=stream.id)
        yield _event("error", next(sequence), code=error.code, message=error.message, param=error.param)
