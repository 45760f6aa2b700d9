"""Trace sampling: a process records the share of the traces it starts that its setting says,
and always follows the sampled flag of the traceparent it was sent."""

from opentelemetry import context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mesh.settings import MeshSettings
from mesh.telemetry import tracer_provider

SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
NOT_SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


def _recording(ratio: float, traceparent: str | None = None) -> bool:
    tracer = tracer_provider(MeshSettings(trace_sample_ratio=ratio)).get_tracer("test")
    parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent}) if traceparent else context.Context()
    span = tracer.start_span("request", context=parent)
    try:
        return span.is_recording()
    finally:
        span.end()


def test_a_process_starting_traces_samples_at_its_ratio():
    assert _recording(1.0) and not _recording(0.0)
    tracer = tracer_provider(MeshSettings(trace_sample_ratio=0.25)).get_tracer("test")
    recorded = 0
    for _ in range(2000):
        span = tracer.start_span("request")
        recorded += span.is_recording()
        span.end()
    assert 350 < recorded < 650


def test_a_caller_sampled_flag_wins_over_the_ratio():
    assert _recording(0.0, SAMPLED)
    assert not _recording(1.0, NOT_SAMPLED)
