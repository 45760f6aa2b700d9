"""One source of truth: docker-compose.yml, k8s/ and the settings classes agree on every port,
address and setting, and every LLMESH_ variable they set is one that process really reads."""

import os
import re
from unittest import mock
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.settings import GatewaySettings
from mesh.settings import DNS_SCHEME, ENV_PREFIX, MeshSettings
from services.inference.settings import InferenceSettings
from services.inference.triton_gpu import TritonGpuSettings
from services.postprocess.settings import PostprocessSettings
from services.preprocess.settings import PreprocessSettings
from services.router.settings import RouterSettings
from support.deploy import K8S, REPO_ROOT, compose_config, container_env, kustomize, of_kind

# The settings class of each process, by the module its command runs.
SETTINGS = {
    "services.preprocess": PreprocessSettings,
    "services.router": RouterSettings,
    "services.inference": InferenceSettings,
    "services.postprocess": PostprocessSettings,
    "gateway": GatewaySettings,
    # The batch worker is an edge of the gateway and reads the gateway's settings.
    "gateway.batch": GatewaySettings,
    "services.inference.triton_server": MeshSettings,
    "services.inference.triton_gpu": TritonGpuSettings,
}
ADDRESS_FIELDS = [name for name in MeshSettings.model_fields if name.endswith("_addr") and name != "listen_addr"]


def _module(command: list[str]) -> str:
    return command[command.index("-m") + 1]


def _settings(cls, env: dict[str, str]):
    """The settings the process would build from exactly this environment."""
    unknown = {name for name in env if name.startswith(ENV_PREFIX)} - {
        ENV_PREFIX + field.upper() for field in cls.model_fields
    }
    assert not unknown, f"{cls.__name__} has no such settings: {sorted(unknown)}"
    with mock.patch.dict(os.environ, env, clear=True):
        return cls()


def _seconds(duration: str) -> float:
    """A compose duration as `config --format json` prints it (e.g. "30s", "1m30s")."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(value) * units[unit] for value, unit in re.findall(r"([\d.]+)(ms|h|m|s)", duration))


def _port(addr: str) -> int:
    return int(addr.rpartition(":")[2])


def test_the_mesh_addresses_keep_the_documented_ports():
    """Compose and k8s change hosts, never ports: those come from the settings' defaults."""
    compose = compose_config("cpu")["services"]["gateway"]["environment"]
    k8s = (K8S / "base" / "mesh.env").read_text()
    k8s_env = dict(line.split("=", 1) for line in k8s.splitlines() if line and not line.startswith("#"))
    for field in ADDRESS_FIELDS:
        default_port = _port(MeshSettings.model_fields[field].default)
        name = ENV_PREFIX + field.upper()
        assert _port(compose[name]) == default_port, name
        assert _port(k8s_env[name]) == default_port, name
    redis_port = urlsplit(MeshSettings.model_fields["redis_url"].default).port
    assert urlsplit(compose["LLMESH_REDIS_URL"]).port == urlsplit(k8s_env["LLMESH_REDIS_URL"]).port == redis_port


@pytest.mark.parametrize("overlay", ["base", "overlays/dev", "overlays/prod"])
def test_k8s_env_ports_probes_and_services_agree_with_the_settings(overlay):
    docs = kustomize(K8S / overlay)
    services = of_kind(docs, "Service")
    for name, deployment in of_kind(docs, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        settings = _settings(SETTINGS[_module(container["command"])], container_env(docs, deployment))
        ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
        for field in ADDRESS_FIELDS:
            host, _, port = getattr(settings, field).removeprefix(DNS_SCHEME).rpartition(":")
            assert int(port) in [p["port"] for p in services[host]["spec"]["ports"]], (name, field)
        redis = urlsplit(settings.redis_url)
        assert redis.port in [p["port"] for p in services[redis.hostname]["spec"]["ports"]]
        if settings.listen_addr:
            assert ports["grpc"] == _port(settings.listen_addr), name
        if settings.metrics_port:
            assert ports["metrics"] == settings.metrics_port, name
            annotations = deployment["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == str(settings.metrics_port), name
        if isinstance(settings, GatewaySettings) and "http" in ports:
            assert ports["http"] == settings.http_addr()[1]
        if pod["containers"][0].get("lifecycle"):
            pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            assert pod["terminationGracePeriodSeconds"] > pause + settings.shutdown_grace_s, name
        # A Service's target port names a port the pods really open.
        service = services.get(deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"])
        for port in service["spec"]["ports"] if service else []:
            assert port["targetPort"] in ports, (name, port)


@pytest.mark.parametrize("overlay", ["base", "overlays/dev", "overlays/prod"])
def test_k8s_services_are_headless_dns_replicas_unless_istio_balances(overlay):
    """Without Istio, a caller resolves each service's headless Service to its pods and balances
    over them (mesh.replicas); with Istio, the sidecars do, so the Service has a cluster IP and
    the callers use its one address."""
    docs = kustomize(K8S / overlay)
    istio = bool(of_kind(docs, "VirtualService"))
    env = of_kind(docs, "ConfigMap")["mesh"]["data"]
    services, deployments = of_kind(docs, "Service"), of_kind(docs, "Deployment")
    for name in ("preprocess", "router", "inference", "postprocess"):
        addr, service = env[f"LLMESH_{name.upper()}_ADDR"], services[name]["spec"]
        if istio:
            assert not addr.startswith(DNS_SCHEME) and addr.rpartition(":")[0] == name, addr
            assert "clusterIP" not in service, name
            continue
        assert addr.startswith(DNS_SCHEME) and addr.removeprefix(DNS_SCHEME).rpartition(":")[0] == name, addr
        assert service["clusterIP"] == "None", name
        # A headless Service maps no ports: callers reach the pod's own port by the Service's number.
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        pod_ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        for port in service["ports"]:
            assert pod_ports[port["targetPort"]] == port["port"], (name, port)


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_compose_env_ports_health_checks_and_scrapes_agree_with_the_settings(profile):
    config = compose_config(profile)
    services = config["services"]
    aliases = [
        (network or {}).get("aliases", []) for s in services.values() for network in s.get("networks", {}).values()
    ]
    names = set(services).union(*aliases)
    scrape = yaml.safe_load((REPO_ROOT / "deploy/compose/prometheus.yml").read_text())
    targets = {target for job in scrape["scrape_configs"] for c in job["static_configs"] for target in c["targets"]}
    llmesh = {name: s for name, s in services.items() if s.get("command") and "-m" in s["command"]}
    expected = {"preprocess", "router", "inference", "postprocess", "gateway", "batch-worker", f"triton-{profile}"}
    assert expected <= llmesh.keys()
    for name, service in llmesh.items():
        settings = _settings(SETTINGS[_module(service["command"])], service["environment"])
        for field in ADDRESS_FIELDS:
            assert getattr(settings, field).rpartition(":")[0] in names, (name, field)
        assert urlsplit(settings.redis_url).hostname in names
        assert urlsplit(settings.otlp_endpoint).hostname in names
        assert _seconds(service["stop_grace_period"]) > settings.shutdown_grace_s, name
        check = " ".join(service.get("healthcheck", {}).get("test", []))
        if name == "gateway":
            assert f"127.0.0.1:{settings.http_addr()[1]}/readyz" in check
            assert f"{name}:{settings.http_addr()[1]}" in targets
        elif settings.listen_addr:
            assert check.endswith(f"127.0.0.1:{_port(settings.listen_addr)}"), name
        if settings.metrics_port:
            assert f"{name}:{settings.metrics_port}" in targets, name
    assert f"triton:{_port(MeshSettings.model_fields['triton_metrics_addr'].default)}" in targets
    # Every dependency waits for its health check.
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            if "healthcheck" in services.get(dependency, {}):
                assert condition["condition"] == "service_healthy", (name, dependency)
