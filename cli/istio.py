"""Istio routing generated from the experiment definitions the gateway serves.

`llmesh experiments export-istio FILE` writes, for every service of the mesh, a DestinationRule
(connection pool, outlier detection, one subset per deployment) and a VirtualService (retries,
timeout, and the variant routes). The gateway assigns each request once and sends the assignment
on every call as ``x-llmesh-experiment-<name>: <variant>`` (mesh.routing); the VirtualService
sends each variant's header to the subset of that variant's deployment. Both read the same
definitions file, so the gateway's split and the mesh's routes cannot disagree.

Requests that carry no assignment header (the gateway could not assign them: no unit id) go
to the primary deployment, as the gateway serves them locally; an experiment whose unit is
``request`` is, in addition, split by its weights for such requests, which is the same
per-request assignment.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.experiments.definitions import BUCKETS, SERVICES, Experiment, Shadow, Variant, load_file
from gateway.settings import GatewaySettings
from mesh.discovery import PRIMARY
from mesh.routing import header
from mesh.settings import MeshSettings

# Pods of a deployment carry this label; a subset is named after the deployment.
DEPLOYMENT_LABEL = "llmesh.io/deployment"

# The services whose calls include generation streams (GenerateStream, PostprocessStream).
STREAMING = ("inference", "postprocess")
# Envoy's route timeout covers a whole response, a stream's to its last message: for the
# streaming services it is the stream deadline every caller sets (mesh.deadlines), so that
# the caller's own deadline, started before the proxy's clock, ends a call first and the route
# never cuts a stream the mesh allows. The other services answer unary calls only.
_STREAM_DEADLINE_S = round(MeshSettings.model_fields["stream_deadline_s"].default)
ROUTE_TIMEOUT_S = {"preprocess": 15, "router": 15, "inference": _STREAM_DEADLINE_S, "postprocess": _STREAM_DEADLINE_S}

# The gRPC clients retry UNAVAILABLE themselves (mesh.channel's service config); with Istio the
# components/istio overlay turns that off (LLMESH_RETRY_MAX_ATTEMPTS=1) and the proxy retries
# the same failures: the call never reached a server that could have acted on it.
RETRIES = {"attempts": 2, "perTryTimeout": "10s", "retryOn": "unavailable,connect-failure,refused-stream"}
# Envoy stops a try's timer once the response has started (its headers, which a gRPC server
# sends with its first message), so for a stream perTryTimeout bounds the wait for the first
# chunk: a slow first token (a queue, a long prompt) must not be cut before the gateway's own
# idle timeout (LLMESH_STREAM_IDLE_TIMEOUT_S) would end it with a clear stream_stalled.
STREAM_PER_TRY_TIMEOUT_S = round(GatewaySettings.model_fields["stream_idle_timeout_s"].default) + 5


def _retries(service: str) -> dict[str, object]:
    if service in STREAMING:
        return {**RETRIES, "perTryTimeout": f"{STREAM_PER_TRY_TIMEOUT_S}s"}
    return dict(RETRIES)


def service_port(service: str) -> int:
    """The port from the settings' defaults (never the environment: the output is committed)."""
    return int(MeshSettings.model_fields[f"{service}_addr"].default.rpartition(":")[2])


def _service_experiments(experiments: list[Experiment], service: str) -> list[Experiment]:
    return [e for e in experiments if e.target.kind == "service" and e.target.service == service]


def deployments(experiments: list[Experiment], service: str) -> list[str]:
    """The deployments of a service that some experiment routes to, primary first."""
    names = [PRIMARY]
    for experiment in _service_experiments(experiments, service):
        arms: list[Variant | Shadow] = [*experiment.variants, *([experiment.shadow] if experiment.shadow else [])]
        names += [arm.deployment for arm in arms if arm.deployment not in names]
    return names


def _destination(service: str, deployment: str, weight: int | None = None) -> dict:
    destination: dict[str, object] = {
        "destination": {"host": service, "subset": deployment, "port": {"number": service_port(service)}}
    }
    if weight is not None:
        destination["weight"] = weight
    return destination


def _route(name: str, service: str, destinations: list[dict], match: list[dict] | None = None) -> dict:
    route: dict[str, object] = {"name": name}
    if match:
        route["match"] = match
    route |= {"route": destinations, "timeout": f"{ROUTE_TIMEOUT_S[service]}s", "retries": _retries(service)}
    return route


def _percent(weights: list[int]) -> list[int]:
    """Basis points as Istio's integer percentages summing to 100 (largest remainder)."""
    exact = [w * 100 / BUCKETS for w in weights]
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in by_remainder[: 100 - sum(shares)]:
        shares[i] += 1
    return shares


def virtual_service(experiments: list[Experiment], service: str) -> dict:
    routes = []
    default = [_destination(service, PRIMARY)]
    for experiment in _service_experiments(experiments, service):
        if experiment.state != "running":
            continue
        key = header(experiment.name)
        for variant in experiment.variants:
            match = [{"headers": {key: {"exact": variant.name}}}]
            destination = [_destination(service, variant.deployment)]
            routes.append(_route(f"{experiment.name}-{variant.name}", service, destination, match))
        if experiment.shadow is not None:
            match = [{"headers": {key: {"exact": f"shadow:{experiment.shadow.name}"}}}]
            destination = [_destination(service, experiment.shadow.deployment)]
            routes.append(_route(f"{experiment.name}-{experiment.shadow.name}", service, destination, match))
        if experiment.unit == "request":
            percents = _percent([variant.weight for variant in experiment.variants])
            default = [
                _destination(service, variant.deployment, share)
                for variant, share in zip(experiment.variants, percents, strict=True)
                if share
            ]
    routes.append(_route("default", service, default))
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": service},
        "spec": {"hosts": [service], "http": routes},
    }


def destination_rule(experiments: list[Experiment], service: str) -> dict:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": service},
        "spec": {
            "host": service,
            "trafficPolicy": {
                "connectionPool": {
                    "tcp": {"maxConnections": 1024, "connectTimeout": "2s"},
                    "http": {"http2MaxRequests": 1024, "maxRequestsPerConnection": 0, "idleTimeout": "300s"},
                },
                # A pod that keeps failing is taken out for a while; never more than half of them.
                "outlierDetection": {
                    "consecutive5xxErrors": 5,
                    "consecutiveGatewayErrors": 3,
                    "interval": "10s",
                    "baseEjectionTime": "30s",
                    "maxEjectionPercent": 50,
                },
            },
            "subsets": [
                {"name": deployment, "labels": {DEPLOYMENT_LABEL: deployment}}
                for deployment in deployments(experiments, service)
            ],
        },
    }


def manifests(experiments: list[Experiment]) -> list[dict]:
    docs = []
    for service in SERVICES:
        docs += [destination_rule(experiments, service), virtual_service(experiments, service)]
    return docs


def render(definitions: Path) -> str:
    banner = (
        f"# Generated by `llmesh experiments export-istio {definitions.name}` from the definitions the\n"
        "# gateway serves; do not edit (tests/unit/deploy checks it is current).\n"
    )
    return banner + yaml.safe_dump_all(manifests(load_file(definitions)), sort_keys=False, width=120)
