"""Batch files in OpenAI's line format: the input checked line by line, the output written line
by line.

An input line is ``{"custom_id": ..., "method": "POST", "url": "/v1/chat/completions", "body":
{...}}``, the body being what the endpoint takes interactively (checked by the same models).
Blank lines are skipped; line numbers in errors count every line of the file, from 1.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from gateway.errors import InvalidRequest
from gateway.openai_schema import ChatCompletionRequest, CompletionRequest, describe_validation_error
from gateway.records import ChatInput
from mesh.catalog import AUTO_MODEL, ModelSpec, find_model

ENDPOINTS: dict[str, type[ChatCompletionRequest] | type[CompletionRequest]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}
MAX_CUSTOM_ID = 512
_LINE_FIELDS = {"custom_id", "method", "url", "body"}


class InvalidFile(InvalidRequest):
    reason = "INVALID_FILE"

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"Line {line}: {problem}", param="file", metadata={"line": str(line)})
        self.line = line
        self.problem = problem


@dataclass(frozen=True)
class BatchRequest:
    index: int  # the request's place among the file's requests, from 0
    line: int  # its line in the file, from 1
    custom_id: str
    url: str
    body: ChatCompletionRequest | CompletionRequest

    def to_input(self) -> ChatInput:
        return self.body.to_input()


@dataclass(frozen=True)
class LineProblem:
    """A line that cannot be run (only possible if the file changed after it was checked)."""

    index: int
    line: int
    custom_id: str
    problem: str


def _parse(raw: bytes, line: int, index: int, models: Sequence[ModelSpec]) -> BatchRequest:
    try:
        value = json.loads(raw)
    except UnicodeDecodeError:
        raise InvalidFile(line, "is not valid UTF-8.") from None
    except json.JSONDecodeError as error:
        raise InvalidFile(line, f"is not valid JSON ({error.msg} at column {error.colno}).") from None
    if not isinstance(value, dict):
        raise InvalidFile(line, "must be a JSON object with custom_id, method, url and body.")
    unknown = sorted(set(value) - _LINE_FIELDS)
    if unknown:
        raise InvalidFile(line, f"unrecognized field '{unknown[0]}'; a line has custom_id, method, url and body.")
    custom_id = value.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise InvalidFile(line, "'custom_id' is required and must be a non-empty string.")
    if len(custom_id) > MAX_CUSTOM_ID:
        raise InvalidFile(line, f"'custom_id' is longer than {MAX_CUSTOM_ID} characters.")
    if value.get("method") != "POST":
        raise InvalidFile(line, f"'method' must be \"POST\", got {json.dumps(value.get('method'))}.")
    url = value.get("url")
    if url not in ENDPOINTS:
        raise InvalidFile(
            line, f"'url' {json.dumps(url)} is not a supported endpoint; use one of {', '.join(ENDPOINTS)}."
        )
    body = value.get("body")
    if not isinstance(body, dict):
        raise InvalidFile(line, "'body' is required and must be a JSON object.")
    if body.get("stream"):
        raise InvalidFile(line, "'body.stream' is not supported in a batch.")
    try:
        request = ENDPOINTS[url].model_validate(body)
    except ValidationError as error:
        message, param = describe_validation_error(error.errors())
        # The same words as the interactive endpoint, with the field named inside the line.
        raise InvalidFile(line, message.replace(f"'{param}'", f"'body.{param}'", 1) if param else message) from None
    if request.model != AUTO_MODEL and find_model(models, request.model) is None:
        raise InvalidFile(line, f"the model '{request.model}' does not exist (in 'body.model').")
    return BatchRequest(index, line, custom_id, url, request)


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The file's lines (without their ends) from pieces of any size."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        *complete, rest = rest.split(b"\n")
        yield from complete
    if rest:
        yield rest


@dataclass(frozen=True)
class FileSummary:
    requests: int
    endpoint: str


def validate(chunks: Iterable[bytes], max_requests: int, models: Sequence[ModelSpec]) -> FileSummary:
    """Checks a whole batch input file; InvalidFile names the first bad line."""
    seen: dict[str, int] = {}
    endpoint = ""
    count = 0
    for number, raw in enumerate(_lines(chunks), start=1):
        if not raw.strip():
            continue
        request = _parse(raw, number, count, models)
        if request.custom_id in seen:
            raise InvalidFile(
                number,
                f"custom_id '{request.custom_id}' is already used on line {seen[request.custom_id]}; "
                "custom_ids must be unique within a file.",
            )
        seen[request.custom_id] = number
        if endpoint and request.url != endpoint:
            raise InvalidFile(
                number, f"'url' is {request.url}, but earlier lines use {endpoint}; a file has one endpoint."
            )
        endpoint = request.url
        count += 1
        if count > max_requests:
            raise InvalidFile(number, f"the file has more than {max_requests} requests, the most a batch may have.")
    if count == 0:
        raise InvalidRequest("The file has no requests.", param="file", reason="INVALID_FILE")
    return FileSummary(count, endpoint)


@dataclass(frozen=True)
class Chunk:
    """A run of consecutive requests: the unit of work of one task."""

    first_index: int
    first_line: int
    start: int  # byte offsets in the file
    end: int
    count: int  # requests in it


def plan_chunks(chunks: Iterable[bytes], lines_per_chunk: int) -> list[Chunk]:
    """Splits a file into runs of ``lines_per_chunk`` requests, by byte range."""
    plan: list[Chunk] = []
    offset = index = 0
    first: tuple[int, int, int] | None = None  # the open chunk's first index, line and offset
    for number, raw in enumerate(_lines(chunks), start=1):
        end = offset + len(raw) + 1
        if raw.strip():
            first = first or (index, number, offset)
            index += 1
            if index - first[0] == lines_per_chunk:
                plan.append(Chunk(*first, end, lines_per_chunk))
                first = None
        offset = end
    if first is not None:
        plan.append(Chunk(*first, offset, index - first[0]))
    return plan


def read_chunk(data: bytes, chunk: Chunk, models: Sequence[ModelSpec]) -> Iterator[BatchRequest | LineProblem]:
    """The requests of one chunk, from its bytes."""
    index = chunk.first_index
    for number, raw in enumerate(data.split(b"\n"), start=chunk.first_line):
        if not raw.strip():
            continue
        try:
            yield _parse(raw, number, index, models)
        except InvalidFile as error:
            yield LineProblem(index, number, _custom_id_of(raw), error.problem)
        index += 1


def _custom_id_of(raw: bytes) -> str:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ""
    custom_id = value.get("custom_id") if isinstance(value, dict) else None
    return custom_id if isinstance(custom_id, str) else ""


# -- output ------------------------------------------------------------------------------------


def request_line_id(batch_id: str, index: int) -> str:
    """The id of one request's output line: the same however often the request is retried."""
    return "batch_req_" + hashlib.sha256(f"{batch_id}:{index}".encode()).hexdigest()[:32]


def response_line(batch_id: str, index: int, custom_id: str, status_code: int, request_id: str, body: dict) -> str:
    """A request that ran (well or not): OpenAI's ``response`` with the endpoint's answer or
    error object as its body."""
    return _dumps(
        {
            "id": request_line_id(batch_id, index),
            "custom_id": custom_id,
            "response": {"status_code": status_code, "request_id": request_id, "body": body},
            "error": None,
        }
    )


def unexecuted_line(batch_id: str, index: int, custom_id: str, code: str, message: str) -> str:
    """A request that never ran (the batch was cancelled or expired first)."""
    return _dumps(
        {
            "id": request_line_id(batch_id, index),
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        }
    )


def _dumps(value: dict) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
