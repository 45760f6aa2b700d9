"""OpenTelemetry set-up shared by every process."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from mesh.settings import MeshSettings


def setup_tracing(settings: MeshSettings) -> TracerProvider:
    """Install the global tracer provider (:func:`tracer_provider`)."""
    provider = tracer_provider(settings)
    trace.set_tracer_provider(provider)
    return provider


def tracer_provider(settings: MeshSettings) -> TracerProvider:
    """A tracer provider whose spans go to OTLP/HTTP when an endpoint is set.

    W3C trace context is OpenTelemetry's default propagator, which is what Triton reads too.
    A request is recorded or not as a whole: the process that starts its trace samples it at
    ``trace_sample_ratio``, and every process after follows the sampled flag it was sent.
    """
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
    )
    if settings.otlp_endpoint:
        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint.rstrip("/") + "/v1/traces")
        # A short delay keeps local traces readable within a second of the request.
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    return provider


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span if it is sampled, for callers that inject it by
    hand (Triton); None for a request this process does not record.

    Triton records every request that carries a valid traceparent, whatever its sampled flag
    says (tritonserver 2.51 sets ``force_sample`` on any valid propagated context), so sending
    an unsampled one would make Triton trace the requests llmesh sampled out."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid or not span_context.trace_flags.sampled:
        return None
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-01"
