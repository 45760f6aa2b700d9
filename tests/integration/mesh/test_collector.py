"""The local trace collector accepts what the Python SDK and Triton send, and serves traces back."""

from fastapi.testclient import TestClient
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cli.waterfall import ordered_with_depth, waterfall
from mesh.collector import CollectorSettings, create_app


def _client(tmp_path):
    return TestClient(create_app(CollectorSettings(trace_db=tmp_path / "traces.db")))


def test_protobuf_export_from_the_python_sdk_round_trips(tmp_path):
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "gateway"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span("parent") as parent,
        tracer.start_as_current_span("child", attributes={"gen_ai.request.model": "llmesh-small"}),
    ):
        pass
    body = encode_spans(memory.get_finished_spans()).SerializeToString()
    client = _client(tmp_path)

    response = client.post("/v1/traces", content=body, headers={"content-type": "application/x-protobuf"})
    assert response.status_code == 200

    trace_id = format(parent.get_span_context().trace_id, "032x")
    spans = client.get(f"/v1/traces/{trace_id}").json()["spans"]
    assert [s["name"] for s in spans] == ["parent", "child"]
    child = spans[1]
    assert child["service"] == "gateway"
    assert child["parent_span_id"] == format(parent.get_span_context().span_id, "016x")
    assert child["attributes"]["gen_ai.request.model"] == "llmesh-small"


def test_triton_style_json_export_with_hex_ids(tmp_path):
    trace_id, caller, root = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "00f067aa0ba902b7"
    payload = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "triton"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": root,
                                "parentSpanId": caller,
                                "name": "InferRequest",
                                "startTimeUnixNano": "1000",
                                "endTimeUnixNano": "9000",
                                "attributes": [{"key": "triton.model_name", "value": {"stringValue": "llmesh-small"}}],
                            },
                            {
                                "traceId": trace_id,
                                "spanId": "1111111111111111",
                                "parentSpanId": root,
                                "name": "compute",
                                "startTimeUnixNano": "2000",
                                "endTimeUnixNano": "8000",
                            },
                        ]
                    }
                ],
            }
        ]
    }
    client = _client(tmp_path)
    assert client.post("/v1/traces", json=payload).status_code == 200

    spans = client.get(f"/v1/traces/{trace_id}").json()["spans"]
    assert [(s["name"], s["parent_span_id"]) for s in spans] == [("InferRequest", caller), ("compute", root)]
    assert spans[0]["attributes"]["triton.model_name"] == "llmesh-small"
    # The caller's span is not in this store, so InferRequest is a root of the waterfall.
    assert [(s["name"], depth) for s, depth in ordered_with_depth(spans)] == [("InferRequest", 0), ("compute", 1)]
    assert waterfall(spans).row_count == 2


def test_unknown_trace_is_empty(tmp_path):
    assert _client(tmp_path).get("/v1/traces/" + "0" * 32).json()["spans"] == []
