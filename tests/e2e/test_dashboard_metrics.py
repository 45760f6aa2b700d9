"""Grafana's dashboard and the autoscalers' adapter rules read only metrics that the running
processes really export (scraped from the real stack)."""

import json
import re

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mesh.settings import REPO_ROOT

pytestmark = pytest.mark.e2e

DASHBOARD = REPO_ROOT / "deploy/compose/grafana/dashboards/llmesh.json"
ADAPTER = REPO_ROOT / "k8s/components/hpa/prometheus-adapter-values.yaml"
# Exported by NVIDIA's DCGM exporter on GPU nodes, not by a process of this stack.
EXTERNAL = {"DCGM_FI_DEV_GPU_UTIL"}
PROMQL_FUNCTIONS = "sum max min avg count rate irate increase histogram_quantile clamp_min avg_over_time"
PROMQL_KEYWORDS = "by without and or unless on ignoring group_left group_right"
PROMQL_WORDS = set(f"{PROMQL_FUNCTIONS} {PROMQL_KEYWORDS}".split())
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}


def metric_names(expr: str) -> set[str]:
    """The series a PromQL expression reads: identifiers outside label matchers, ranges, strings
    and by/without lists that are neither functions nor keywords."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|<<[^>]*>>", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"(?<![A-Za-z0-9_:])\d[\d.]*(e[+-]?\d+)?", "", expr)
    return set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr)) - PROMQL_WORDS


def test_metric_names_are_read_from_promql():
    expr = 'histogram_quantile(0.95, sum by (model, le) (rate(llmesh_x_bucket{route=~"/v1/.*"}[5m]))) / 1e6'
    assert metric_names(expr) == {"llmesh_x_bucket"}


def _exported(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_dashboard_and_adapter_use_only_exported_metrics(stack, base_url, headers):
    # One request first, so labelled series exist everywhere along the path.
    body = {"model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "What does len do?"}]}
    assert httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=120).status_code == 200
    ports = stack.ports
    urls = [f"{base_url}/metrics", f"http://127.0.0.1:{ports.triton_metrics}/metrics"] + [
        f"http://127.0.0.1:{getattr(ports, f'{name}_metrics')}/metrics"
        for name in ("preprocess", "router", "inference", "postprocess")
    ]
    exported = set().union(*(_exported(httpx.get(url, timeout=10).raise_for_status().text) for url in urls))
    dashboard = json.loads(DASHBOARD.read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in metric_names(target["expr"])
    }
    assert used and not used - exported, sorted(used - exported)
    rules = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    series = set().union(*(metric_names(rule["seriesQuery"]) for rule in rules))
    assert not series - exported - EXTERNAL, sorted(series - exported - EXTERNAL)
