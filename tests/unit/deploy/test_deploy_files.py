"""The Istio routes are generated from the experiment definitions; the compose file follows the
Compose specification; the Dockerfiles pass hadolint; network policies allow exactly the
request path's edges."""

import json
import subprocess
from importlib import resources

import jsonschema
import yaml

from cli.istio import deployments, render
from gateway.experiments.definitions import SERVICES, load_file
from mesh.discovery import PRIMARY
from support.deploy import COMPOSE_FILE, K8S, REPO_ROOT, kustomize, of_kind, tool

ISTIO = K8S / "components" / "istio"


def test_committed_istio_routes_are_generated_from_the_definitions():
    assert (ISTIO / "generated.yaml").read_text() == render(ISTIO / "experiments.yaml"), (
        "run: llmesh experiments export-istio k8s/components/istio/experiments.yaml --out k8s/components/istio/generated.yaml"
    )


def test_every_variant_deployment_exists_and_the_gateway_can_address_it():
    experiments = load_file(ISTIO / "experiments.yaml")
    docs = kustomize(K8S / "overlays" / "prod")
    config = of_kind(docs, "ConfigMap")["mesh"]["data"]
    variant_addrs = json.loads(config["LLMESH_VARIANT_ADDRS"])
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in of_kind(docs, "Deployment").values()]
    for service in SERVICES:
        for deployment in deployments(experiments, service):
            labels = {"app.kubernetes.io/name": service, "llmesh.io/deployment": deployment}
            assert any(labels.items() <= pod.items() for pod in pods), (service, deployment)
            if deployment != PRIMARY:
                # Every deployment of a service is behind the service's own name.
                assert variant_addrs[service][deployment] == config[f"LLMESH_{service.upper()}_ADDR"]


def test_variant_routes_follow_the_assignment_header():
    docs = yaml.safe_load_all((ISTIO / "generated.yaml").read_text())
    routes = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "VirtualService"}
    http = routes["router"]["spec"]["http"]
    by_name = {route["name"]: route for route in http}
    assert by_name["router-threshold-b"]["match"] == [
        {"headers": {"x-llmesh-experiment-router-threshold": {"exact": "b"}}}
    ]
    assert by_name["router-threshold-b"]["route"][0]["destination"]["subset"] == "b"
    assert by_name["router-threshold-a"]["route"][0]["destination"]["subset"] == PRIMARY
    assert http[-1]["name"] == "default" and "match" not in http[-1]


def test_compose_file_follows_the_compose_specification():
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    errors = sorted(
        error.message for error in jsonschema.validators.validator_for(schema)(schema).iter_errors(document)
    )
    assert not errors
    broken = {
        **document,
        "services": {**document["services"], "redis": {**document["services"]["redis"], "helthcheck": {}}},
    }
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))
    for profile in ("cpu", "gpu"):
        # compose itself: anchors, interpolation, profiles, depends_on targets.
        argv = [tool("docker-compose"), "-f", str(COMPOSE_FILE), "--profile", profile, "config", "--quiet"]
        subprocess.run(argv, check=True, env={"PATH": "/usr/bin:/bin"})


def test_dockerfiles_pass_hadolint():
    dockerfiles = [REPO_ROOT / "Dockerfile", *sorted((REPO_ROOT / "deploy").glob("*.Dockerfile"))]
    result = subprocess.run([tool("hadolint"), *map(str, dockerfiles)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _selects(selector: dict, labels: dict) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


def test_network_policies_allow_exactly_the_request_path():
    docs = kustomize(K8S / "overlays" / "prod")
    policies = of_kind(docs, "NetworkPolicy").values()
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in of_kind(docs, "Deployment").items()}
    pods["redis"] = of_kind(docs, "StatefulSet")["redis"]["spec"]["template"]["metadata"]["labels"]
    assert any(
        p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] and "egress" not in p["spec"] for p in policies
    )

    def allowed(direction: str, pod: str, peer: str, port: int) -> bool:
        for policy in policies:
            spec = policy["spec"]
            if not _selects(spec["podSelector"], pods[pod]):
                continue
            for rule in spec.get(direction, []):
                peers = rule.get("from" if direction == "ingress" else "to")
                peer_ok = peers is None or any(
                    "namespaceSelector" not in p and _selects(p.get("podSelector", {}), pods[peer]) for p in peers
                )
                if peer_ok and any(p["port"] == port for p in rule.get("ports", [])):
                    return True
        return False

    ports = {"preprocess": 50051, "router": 50052, "inference": 50053, "postprocess": 50054, "redis": 6379}
    edges = {
        (client, server, port)
        for client in pods
        for server in pods
        for port in {*ports.values(), 8001, 8002}
        if client != server and allowed("egress", client, server, port) and allowed("ingress", server, client, port)
    }
    base = {name for name in pods if not name.endswith("-b")}
    edges = {(c, s.removesuffix("-b"), p) for c, s, p in edges if c in base}
    expected = {
        *(("gateway", s, p) for s, p in ports.items()),
        *(("batch-worker", s, p) for s, p in ports.items()),
        ("router", "inference", 50053),
        ("router", "redis", 6379),
        ("router", "triton", 8002),
        ("inference", "triton", 8001),
        ("inference", "redis", 6379),
    }
    assert edges == expected
