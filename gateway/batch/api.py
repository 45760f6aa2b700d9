"""OpenAI's Files and Batch APIs on the REST edge (``/v1/files``, ``/v1/batches``), so the
official client's ``files.*`` and ``batches.*`` work unmodified.

Every object belongs to the tenant of the key that made it; another tenant's id gets the same
404 as an unknown one. Errors are OpenAI error objects, like everywhere on this edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from gateway.batch import jsonl
from gateway.batch.celery_app import START, create_celery
from gateway.batch.storage import FileStorage, storage_for
from gateway.batch.store import CANCELLABLE, BatchRecord, BatchStore, FileRecord
from gateway.errors import Conflict, InvalidRequest, NotFound, UpstreamUnavailable
from gateway.keys_api import api_key
from gateway.openai_schema import unsupported_parameter
from gateway.settings import GatewaySettings
from gateway.tenancy import ApiKey

# OpenAI's one completion window.
COMPLETION_WINDOW = "24h"
# Room for the multipart framing and the other form fields around the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
_FORM_FIELDS = {"file", "purpose"}
_READ_BYTES = 64 * 1024


class Batches:
    """What the Files and Batch routes share: the store, the file storage and the queue."""

    def __init__(self, settings: GatewaySettings, storage: FileStorage | None = None) -> None:
        self.settings = settings
        self.store = BatchStore(settings)
        self.storage = storage or storage_for(settings)
        self.celery = create_celery(settings)

    async def close(self) -> None:
        await self.store.close()

    async def enqueue(self, batch_id: str) -> None:
        # Celery's producer is synchronous; sending one message is quick, but not in the loop.
        await asyncio.to_thread(self.celery.send_task, START, args=[batch_id], queue=self.settings.batch_queue)


def _batches(request: Request) -> Batches:
    return request.app.state.batches


class NewBatch(BaseModel):
    # Every field OpenAI defines is named here, so one this platform does not serve is refused
    # by name rather than ignored.
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1)
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_expires_after: dict | None = None

    @field_validator("endpoint")
    @classmethod
    def _served_endpoint(cls, value: str) -> str:
        if value not in jsonl.ENDPOINTS:
            raise ValueError(f"'{value}' is not supported; use one of {', '.join(jsonl.ENDPOINTS)}")
        return value

    @field_validator("completion_window")
    @classmethod
    def _one_window(cls, value: str) -> str:
        if value != COMPLETION_WINDOW:
            raise ValueError(f"only '{COMPLETION_WINDOW}' is supported")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        # OpenAI's limits on metadata.
        if value is not None and (
            len(value) > 16 or any(len(k) > 64 for k in value) or any(len(v) > 512 for v in value.values())
        ):
            raise ValueError("at most 16 pairs, keys up to 64 characters and values up to 512")
        return value

    @field_validator("output_expires_after")
    @classmethod
    def _no_output_expiry(cls, value: dict | None) -> dict | None:
        if value is not None:
            raise ValueError("output files do not expire on this platform; leave it out")
        return value


def _no_such_file(file_id: str, param: str | None = None) -> NotFound:
    return NotFound(f"No such File object: {file_id}", param=param)


def _no_such_batch(batch_id: str) -> NotFound:
    return NotFound(f"No batch found with id '{batch_id}'.")


def _page(data: list[dict], has_more: bool) -> dict:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def files_router() -> APIRouter:
    router = APIRouter(prefix="/v1/files", tags=["files"])

    @router.post("")
    async def create(request: Request, key: ApiKey = Depends(api_key)) -> dict:
        batches = _batches(request)
        # A few fields more than it takes, so that an unknown one is refused by its name.
        form = await request.form(max_files=1, max_fields=16)
        try:
            unknown = sorted(set(form) - _FORM_FIELDS)
            if unknown:
                name = unknown[0].partition("[")[0]
                raise InvalidRequest(unsupported_parameter(name), param=name)
            purpose = form.get("purpose")
            if not isinstance(purpose, str) or not purpose:
                raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose")
            if purpose != "batch":
                raise InvalidRequest(
                    f"Invalid value for 'purpose': '{purpose}' is not supported; this platform takes 'batch' files.",
                    param="purpose",
                )
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InvalidRequest("Missing required parameter: 'file'.", param="file")
            record = await _store_upload(batches, key.tenant, upload)
        finally:
            await form.close()
        return record.to_openai()

    @router.get("")
    async def list_files(
        request: Request,
        key: ApiKey = Depends(api_key),
        purpose: str | None = None,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
        order: Literal["asc", "desc"] = "desc",
    ) -> dict:
        records, has_more = await _batches(request).store.files(
            key.tenant, purpose=purpose, after=after, limit=limit, descending=order == "desc"
        )
        return _page([record.to_openai() for record in records], has_more)

    @router.get("/{file_id}")
    async def retrieve(file_id: str, request: Request, key: ApiKey = Depends(api_key)) -> dict:
        return (await _own_file(request, key, file_id)).to_openai()

    @router.get("/{file_id}/content")
    async def content(file_id: str, request: Request, key: ApiKey = Depends(api_key)) -> StreamingResponse:
        record = await _own_file(request, key, file_id)
        storage = _batches(request).storage
        chunks = storage.stream(record.id)
        try:
            # Read the first piece here, so a file missing from storage is an error response
            # rather than a response that breaks off.
            first = await run_in_threadpool(next, chunks, b"")
        except FileNotFoundError as error:
            raise UpstreamUnavailable("The file's content is unavailable; please retry.") from error

        def body():
            yield first
            yield from chunks

        return StreamingResponse(
            body(),
            media_type="application/octet-stream",
            headers={"content-disposition": f'attachment; filename="{record.filename}"'},
        )

    @router.delete("/{file_id}")
    async def delete(file_id: str, request: Request, key: ApiKey = Depends(api_key)) -> dict:
        batches = _batches(request)
        record = await _own_file(request, key, file_id)
        users = await batches.store.file_users(record.id)
        if users:
            raise Conflict(
                f"The file is the input of batch {sorted(users)[0]}, which has not finished; "
                "cancel it or wait for it before deleting the file.",
                param="file_id",
            )
        await batches.store.delete_file(record)
        await run_in_threadpool(batches.storage.delete, record.id)
        return {"id": record.id, "object": "file", "deleted": True}

    return router


async def _own_file(request: Request, key: ApiKey, file_id: str) -> FileRecord:
    record = await _batches(request).store.file(key.tenant, file_id)
    if record is None:
        raise _no_such_file(file_id)
    return record


class _TooLarge(InvalidRequest):
    http_status = 413
    reason = "FILE_TOO_LARGE"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="file")


async def _store_upload(batches: Batches, tenant: str, upload: UploadFile) -> FileRecord:
    settings = batches.settings
    size = upload.size if upload.size is not None else 0
    if size > settings.files_max_bytes:
        raise _TooLarge(f"The file is {size} bytes; the most a file may have is {settings.files_max_bytes} bytes.")
    source = upload.file

    def check_and_save(file_id: str) -> tuple[jsonl.FileSummary, int]:
        source.seek(0)
        summary = jsonl.validate(iter(lambda: source.read(_READ_BYTES), b""), settings.batch_max_lines, settings.models)
        source.seek(0)
        return summary, batches.storage.save(file_id, iter(lambda: source.read(_READ_BYTES), b""))

    file_id = f"file-{secrets.token_hex(12)}"
    summary, stored = await run_in_threadpool(check_and_save, file_id)
    record = FileRecord(
        id=file_id,
        tenant=tenant,
        bytes=stored,
        created_at=int(time.time()),
        filename=upload.filename or "upload.jsonl",
        purpose="batch",
        requests=summary.requests,
        endpoint=summary.endpoint,
    )
    try:
        await batches.store.add_file(record)
    except UpstreamUnavailable:
        await run_in_threadpool(batches.storage.delete, file_id)
        raise
    return record


def batches_router() -> APIRouter:
    router = APIRouter(prefix="/v1/batches", tags=["batches"])

    @router.post("")
    async def create(body: NewBatch, request: Request, key: ApiKey = Depends(api_key)) -> dict:
        batches = _batches(request)
        source = await batches.store.file(key.tenant, body.input_file_id)
        if source is None:
            raise _no_such_file(body.input_file_id, param="input_file_id")
        if source.purpose != "batch":
            raise InvalidRequest(
                f"The file {source.id} has purpose '{source.purpose}'; a batch reads a file uploaded with purpose 'batch'.",
                param="input_file_id",
            )
        if source.endpoint != body.endpoint:
            raise InvalidRequest(
                f"The input file's requests are for {source.endpoint}, but the batch's endpoint is {body.endpoint}.",
                param="endpoint",
            )
        now = int(time.time())
        fields = {
            "id": f"batch_{secrets.token_hex(12)}",
            "tenant": key.tenant,
            "key_id": key.key_id,
            "endpoint": body.endpoint,
            "input_file_id": source.id,
            "completion_window": body.completion_window,
            "status": "validating",
            "created_at": now,
            "expires_at": now + int(batches.settings.batch_completion_window_s),
            "total": source.requests,
            "completed": 0,
            "failed": 0,
        }
        if body.metadata is not None:
            fields["metadata"] = json.dumps(body.metadata, separators=(",", ":"))
        record = await batches.store.add_batch(fields)
        try:
            await batches.enqueue(record.id)
        except Exception as error:
            # Nothing is left half made: the batch exists only if its work is queued.
            with contextlib.suppress(UpstreamUnavailable):
                await batches.store.remove_batch(record)
            raise UpstreamUnavailable("The batch queue is unavailable; please retry.") from error
        return record.to_openai()

    @router.get("")
    async def list_batches(
        request: Request,
        key: ApiKey = Depends(api_key),
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> dict:
        records, has_more = await _batches(request).store.batches(key.tenant, after=after, limit=limit)
        return _page([record.to_openai() for record in records], has_more)

    @router.get("/{batch_id}")
    async def retrieve(batch_id: str, request: Request, key: ApiKey = Depends(api_key)) -> dict:
        return (await _own_batch(request, key, batch_id)).to_openai()

    @router.post("/{batch_id}/cancel")
    async def cancel(batch_id: str, request: Request, key: ApiKey = Depends(api_key)) -> dict:
        store = _batches(request).store
        record = await _own_batch(request, key, batch_id)
        changed, previous = await store.transition(record.id, CANCELLABLE, "cancelling")
        # Cancelling again is harmless; a batch that is finishing or has finished cannot be.
        if not changed and previous not in ("cancelling", "cancelled"):
            raise Conflict(f"Cannot cancel a batch with status '{previous}'.")
        return (await _own_batch(request, key, batch_id)).to_openai()

    return router


async def _own_batch(request: Request, key: ApiKey, batch_id: str) -> BatchRecord:
    record = await _batches(request).store.batch(key.tenant, batch_id)
    if record is None:
        raise _no_such_batch(batch_id)
    return record
