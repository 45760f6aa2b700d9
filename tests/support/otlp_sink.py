"""A stand-in OTLP/HTTP collector that keeps every POST, and can pass each one on to a real one."""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class OtlpSink:
    def __init__(self) -> None:
        self.received: list[tuple[str, str | None, bytes]] = []
        # Set to a collector's /v1/traces URL to forward everything received from then on.
        self.forward_to: str | None = None
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.received.append((self.path, self.headers.get("Content-Type"), body))
                if sink.forward_to:
                    sink._forward(body, self.headers.get("Content-Type") or "application/json")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _forward(self, body: bytes, content_type: str) -> None:
        request = urllib.request.Request(self.forward_to, data=body, headers={"Content-Type": content_type})
        # The collector is not up (yet, or any more): this copy is lost, as with any exporter.
        with contextlib.suppress(OSError):
            urllib.request.urlopen(request, timeout=5).close()

    def spans(self) -> list[tuple[set[str], dict]]:
        """(service names of the resource, span) for every span received."""
        out = []
        for _, _, body in list(self.received):
            for resource_spans in json.loads(body).get("resourceSpans", []):
                services = {
                    attr["value"].get("stringValue")
                    for attr in resource_spans.get("resource", {}).get("attributes", [])
                    if attr["key"] == "service.name"
                }
                for scope in resource_spans.get("scopeSpans", []):
                    out += [(services, span) for span in scope.get("spans", [])]
        return out

    def close(self) -> None:
        self._server.shutdown()
