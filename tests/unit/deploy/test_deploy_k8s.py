"""k8s/: every overlay builds with kustomize and every resource validates against its schema
(Kubernetes' own, strict; Istio's and KEDA's CRDs), with the conventions the base promises."""

import copy

import pytest
import yaml

from support.deploy import K8S, OVERLAYS, kustomize, of_kind, schema_errors

BUILDS = [K8S / "base", *OVERLAYS]


def test_there_are_dev_and_prod_overlays():
    assert {path.name for path in OVERLAYS} >= {"dev", "prod"}


@pytest.mark.parametrize("path", BUILDS, ids=lambda path: path.name)
def test_builds_and_validates_against_the_schemas(path):
    docs = kustomize(path)
    assert of_kind(docs, "Deployment"), "nothing rendered"
    problems = {f"{doc['kind']}/{doc['metadata']['name']}": schema_errors(doc) for doc in docs}
    assert not {name: errors for name, errors in problems.items() if errors}


def test_the_validators_reject_what_a_cluster_would():
    docs = kustomize(K8S / "overlays" / "prod")
    deployment = copy.deepcopy(of_kind(docs, "Deployment")["router"])
    deployment["spec"]["replica"] = 2
    assert schema_errors(deployment)
    virtual_service = copy.deepcopy(of_kind(docs, "VirtualService")["router"])
    virtual_service["spec"]["http"][0]["retries"]["attempt"] = 3
    assert schema_errors(virtual_service)
    scaled_object = copy.deepcopy(of_kind(docs, "ScaledObject")["batch-worker"])
    scaled_object["spec"]["minReplicaCount"] = "one"
    assert schema_errors(scaled_object)


@pytest.mark.parametrize("path", BUILDS, ids=lambda path: path.name)
def test_pods_are_locked_down_and_sized(path):
    docs = kustomize(path)
    workloads = {**of_kind(docs, "Deployment"), **of_kind(docs, "StatefulSet")}
    for name, workload in workloads.items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["serviceAccountName"] in of_kind(docs, "ServiceAccount"), name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys(), name
            assert ":" in container["image"] and not container["image"].endswith(":latest"), name


@pytest.mark.parametrize("path", BUILDS, ids=lambda path: path.name)
def test_every_deployment_has_exactly_one_disruption_budget(path):
    docs = kustomize(path)
    budgets = of_kind(docs, "PodDisruptionBudget").values()
    for name, deployment in of_kind(docs, "Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        # Two budgets over one pod make every eviction of it fail.
        assert len(covering) == 1, (name, [b["metadata"]["name"] for b in covering])


def test_grpc_services_use_native_grpc_probes_on_their_port():
    docs = kustomize(K8S / "overlays" / "prod")
    for name in ("preprocess", "router", "router-b", "inference", "postprocess"):
        container = of_kind(docs, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0]
        grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        assert container["readinessProbe"]["grpc"]["port"] == grpc_port, name
        assert container["startupProbe"]["grpc"]["port"] == grpc_port, name


def test_gpu_pods_ask_for_as_many_gpus_as_the_engine_shards_over():
    docs = kustomize(K8S / "overlays" / "prod")
    pod = of_kind(docs, "Deployment")["triton"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {var["name"]: var["value"] for var in container["env"] if "value" in var}
    shards = int(env["LLMESH_TENSOR_PARALLEL_SIZE"]) * int(env["LLMESH_PIPELINE_PARALLEL_SIZE"])
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == shards
    assert container["image"].split("/")[-1].startswith("llmesh-triton-gpu:")
    assert container["command"][-1] == "services.inference.triton_gpu"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]) and pod["nodeSelector"]


def _hpa_metrics(docs) -> dict[str, set[str]]:
    return {
        name: {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
        for name, hpa in of_kind(docs, "HorizontalPodAutoscaler").items()
    }


def test_autoscaling_targets_and_the_adapter_rules_that_feed_them():
    docs = kustomize(K8S / "overlays" / "prod")
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    deployments = of_kind(docs, "Deployment")
    assert {hpa["spec"]["scaleTargetRef"]["name"] for hpa in hpas.values()} <= deployments.keys()
    triton = {
        m["pods"]["metric"]["name"]: m["pods"]["target"]["averageValue"] for m in hpas["triton"]["spec"]["metrics"]
    }
    assert triton == {"triton_gpu_utilization": "70", "triton_queue_length": "50"}
    for tier in ("gateway", "preprocess", "router", "inference", "postprocess"):
        kinds = {m["type"] for m in hpas[tier]["spec"]["metrics"]}
        assert kinds == {"Resource", "Pods"}, tier
    rules = yaml.safe_load((K8S / "components" / "hpa" / "prometheus-adapter-values.yaml").read_text())["rules"]
    served = {rule["name"]["as"] for rule in rules["custom"]}
    for rule in rules["custom"]:
        assert {"seriesQuery", "resources", "name", "metricsQuery"} <= rule.keys()
        assert rule["resources"]["overrides"], "the adapter must map series labels to pods"
    wanted = set().union(*_hpa_metrics(docs).values())
    assert wanted <= served
    worker = of_kind(docs, "ScaledObject")["batch-worker"]
    assert worker["spec"]["scaleTargetRef"]["name"] in deployments
    assert worker["spec"]["triggers"][0]["metadata"]["listName"] == "llmesh-batch"
