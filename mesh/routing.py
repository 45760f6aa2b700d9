"""The A/B assignment of the current request, as headers on every outbound call.

The gateway assigns each request's variants once (gateway/experiments); locally it then picks
the variant's deployment itself (mesh.discovery), while in Kubernetes every deployment of a
service sits behind one Service and Istio picks the subset from these headers
(`llmesh experiments export-istio` writes the VirtualServices that match them).
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping

import grpc

from mesh.deadlines import DetailsClientInterceptor, for_every_call_kind

# x-llmesh-experiment-<name>: <variant>, the same names the REST edge answers with.
HEADER_PREFIX = "x-llmesh-experiment-"

_assignment: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "llmesh_assignment", default=()
)


def header(experiment: str) -> str:
    return HEADER_PREFIX + experiment


def set_assignment(experiments: Mapping[str, str]) -> None:
    """Every call this task (and the tasks it starts) makes from now on carries these variants.

    Each request runs in its own task, whose context is a copy, so no reset is needed.
    """
    _assignment.set(tuple((header(name), variant) for name, variant in sorted(experiments.items())))


class AssignmentClientInterceptor(DetailsClientInterceptor):
    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        assignment = _assignment.get()
        if not assignment:
            return details
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            (*(details.metadata or ()), *assignment),
            details.credentials,
            details.wait_for_ready,
        )


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    return for_every_call_kind(AssignmentClientInterceptor)
