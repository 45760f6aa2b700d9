"""Helpers for the deployment-file tests: the tools make venv installs, rendered manifests."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from mesh.settings import REPO_ROOT

K8S = REPO_ROOT / "k8s"
OVERLAYS = sorted(path.parent for path in (K8S / "overlays").glob("*/kustomization.yaml"))
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"


def tool(name: str) -> str:
    """A validator from the venv (pyproject's dev extras install them), else from PATH."""
    venv_tool = Path(sys.executable).parent / name
    found = str(venv_tool) if venv_tool.is_file() else shutil.which(name)
    assert found, f"{name} is not installed: `make venv` installs it with the dev extras"
    return found


@functools.cache
def kustomize(path: Path) -> tuple[dict, ...]:
    out = subprocess.run([tool("kubectl"), "kustomize", str(path)], check=True, capture_output=True, text=True)
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def of_kind(docs, kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def container_env(docs, deployment: dict) -> dict[str, str]:
    """The environment a Deployment's first container gets: its ConfigMaps, then its env."""
    config_maps = of_kind(docs, "ConfigMap")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= config_maps[source["configMapRef"]["name"]]["data"]
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


@functools.cache
def compose_config(profile: str) -> dict:
    """docker-compose.yml as compose itself resolves it (anchors, interpolation, profiles)."""
    argv = [tool("docker-compose"), "-f", str(COMPOSE_FILE), "--profile", profile, "config", "--format", "json"]
    # A clean environment: the defaults in the file, not this shell's variables.
    out = subprocess.run(argv, check=True, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout)


def forbid_unknown_fields(schema):
    """Objects with declared properties accept no others, as kubectl's strict field validation."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            forbid_unknown_fields(value)
    elif isinstance(schema, list):
        for value in schema:
            forbid_unknown_fields(value)
    return schema


@functools.cache
def crd_validator(api_version: str, kind: str):
    """Istio's and KEDA's resources: the JSON schema of the cloudcoil models generated from their
    CRDs (Istio 1.24, KEDA 2.16), made strict; None for other kinds."""
    import jsonschema
    from cloudcoil.models.istio.networking.v1 import DestinationRule, VirtualService
    from cloudcoil.models.istio.security.v1 import PeerAuthentication
    from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication

    models = {
        (model.gvk().api_version, model.gvk().kind): model
        for model in (DestinationRule, VirtualService, PeerAuthentication, ScaledObject, TriggerAuthentication)
    }
    model = models.get((api_version, kind))
    if model is None:
        return None
    return jsonschema.Draft202012Validator(forbid_unknown_fields(model.model_json_schema(by_alias=True)))


def schema_errors(doc: dict, k8s_version: str = "1.32.0") -> list[str]:
    """Why a rendered resource is invalid; empty when it validates."""
    import jsonschema
    import kubernetes_validate

    validator = crd_validator(doc["apiVersion"], doc["kind"])
    if validator is not None:
        errors = list(validator.iter_errors(doc))
        return [
            f"{'/'.join(map(str, jsonschema.exceptions.best_match([e]).absolute_path))}: {e.message}" for e in errors
        ]
    try:
        kubernetes_validate.validate(doc, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'/'.join(map(str, error.path))}: {error.message}"]
    return []
