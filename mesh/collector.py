"""A local OTLP/HTTP trace sink, so every process's spans (Triton's included) end up in one place.

Accepts ``POST /v1/traces`` as OTLP protobuf (the Python SDK exporter) or OTLP JSON (Triton's
OpenTelemetry mode), stores spans in SQLite and serves ``GET /v1/traces/{trace_id}`` for
``llmesh trace``. In production, point ``LLMESH_OTLP_ENDPOINT`` at a real collector instead.
Run it with ``python -m mesh.collector``.
"""

from __future__ import annotations

import base64
import gzip
import json
import sqlite3
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import Field

from mesh.settings import REPO_ROOT, MeshSettings


class CollectorSettings(MeshSettings):
    service_name: str = "collector"
    collector_addr: str = "127.0.0.1:4318"
    trace_db: Path = REPO_ROOT / ".run" / "traces.db"
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    kind: str
    start_ns: int
    end_ns: int
    status: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)


def _hex_id(value: str) -> str:
    """OTLP JSON ids are hex by the spec; some exporters send base64 (protobuf's JSON mapping)."""
    if not value:
        return ""
    if all(c in "0123456789abcdefABCDEF" for c in value) and len(value) in (16, 32):
        return value.lower()
    return base64.b64decode(value).hex()


def _any_value(value: dict[str, Any]) -> Any:
    for kind in ("stringValue", "boolValue", "doubleValue"):
        if kind in value:
            return value[kind]
    if "intValue" in value:
        return int(value["intValue"])
    if "arrayValue" in value:
        return [_any_value(v) for v in value["arrayValue"].get("values", [])]
    return str(value)


def _attributes(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {item["key"]: _any_value(item.get("value", {})) for item in items or []}


def spans_from_otlp(payload: dict[str, Any]) -> list[Span]:
    """Flatten an OTLP ExportTraceServiceRequest (in its JSON form) into spans."""
    spans = []
    for resource_spans in payload.get("resourceSpans", []):
        resource = _attributes(resource_spans.get("resource", {}).get("attributes", []))
        service = str(resource.get("service.name", "unknown"))
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                spans.append(
                    Span(
                        trace_id=_hex_id(span.get("traceId", "")),
                        span_id=_hex_id(span.get("spanId", "")),
                        parent_span_id=_hex_id(span.get("parentSpanId", "")),
                        name=span.get("name", ""),
                        service=service,
                        kind=str(span.get("kind", "")),
                        start_ns=int(span.get("startTimeUnixNano", 0)),
                        end_ns=int(span.get("endTimeUnixNano", 0)),
                        status=str(span.get("status", {}).get("code", "")),
                        attributes=_attributes(span.get("attributes", [])),
                    )
                )
    return spans


class SpanStore:
    """Spans in SQLite: survives collector restarts and can be read by several processes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS spans (trace_id TEXT, span_id TEXT, body TEXT,"
                " PRIMARY KEY (trace_id, span_id))"
            )

    def add(self, spans: list[Span]) -> None:
        rows = [(s.trace_id, s.span_id, json.dumps(asdict(s))) for s in spans]
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO spans VALUES (?, ?, ?)", rows)

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM spans WHERE trace_id = ?", (trace_id.lower(),)).fetchall()
        return sorted((Span(**json.loads(body)) for (body,) in rows), key=lambda s: s.start_ns)


def create_app(settings: CollectorSettings) -> FastAPI:
    store = SpanStore(settings.trace_db)
    app = FastAPI(title="llmesh trace collector")

    @app.post("/v1/traces")
    async def export(request: Request) -> Response:
        body = await request.body()
        if len(body) > settings.max_body_bytes:
            raise HTTPException(413, "trace export too large")
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        content_type = request.headers.get("content-type", "")
        if "json" in content_type:
            payload = json.loads(body)
        else:
            message = ExportTraceServiceRequest.FromString(body)
            # The protobuf JSON mapping writes ids as base64, which _hex_id understands.
            payload = MessageToDict(message, use_integers_for_enums=True)
        store.add(spans_from_otlp(payload))
        # An empty ExportTraceServiceResponse: valid as both protobuf and JSON bodies.
        return Response(content=b"" if "json" not in content_type else b"{}", media_type=content_type)

    @app.get("/v1/traces/{trace_id}")
    async def get_trace(trace_id: str) -> dict[str, Any]:
        return {"trace_id": trace_id, "spans": [asdict(span) for span in store.trace(trace_id)]}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    import uvicorn

    from mesh.logging import setup_logging
    from mesh.settings import load_settings

    settings = load_settings(CollectorSettings)
    setup_logging(settings.service_name, settings.log_level)
    host, _, port = settings.collector_addr.rpartition(":")
    uvicorn.run(create_app(settings), host=host, port=int(port), log_config=None, access_log=False)


if __name__ == "__main__":
    main()
