"""A/B test through the real stack: two deployments of the router on different ports (the
session stack's router and its ``router-b``), an experiment applied with the CLI, traffic split
by the gateway, and the report read back with the CLI."""

import json
import time

import httpx
import pytest
from typer.testing import CliRunner

from cli.experiments import app as experiments_cli
from gateway.experiments.assignment import FORCE_HEADER, assign
from gateway.experiments.definitions import parse_yaml
from services.router.settings import RouterSettings

pytestmark = pytest.mark.e2e

NAME = "e2e-router"
DEFINITION = f"""
experiments:
  - name: {NAME}
    description: the stack's router against router-b (perplexity threshold 1e6)
    target: {{kind: service, service: router}}
    unit: user
    min_samples: 10
    variants:
      - {{name: a, weight: 5000}}
      - {{name: b, weight: 5000, deployment: b}}
    # Half the requests are replayed on router-b as well, after their answer has left.
    shadow: {{name: router-b, deployment: b, share: 5000}}
"""
USERS = [f"e2e-user-{index}" for index in range(40)]
# router-b's threshold (tests/e2e/conftest.py) shows in its route reasons.
ROUTER_B_MARK = "1000000"


@pytest.fixture(scope="module")
def experiment(stack, tmp_path_factory):
    redis_url = stack.env["LLMESH_REDIS_URL"]
    path = tmp_path_factory.mktemp("experiments") / "router.yaml"
    path.write_text(DEFINITION)
    result = CliRunner().invoke(experiments_cli, ["apply", str(path), "--redis-url", redis_url])
    assert result.exit_code == 0, result.output
    yield parse_yaml(DEFINITION)[0]
    CliRunner().invoke(experiments_cli, ["delete", NAME, "--redis-url", redis_url])


def _chat(base_url: str, headers: dict, user: str, extra_headers: dict | None = None) -> httpx.Response:
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "What does json.dumps do?"}],
        "max_tokens": 4,
        "temperature": 0,
        "user": user,
    }
    return httpx.post(
        f"{base_url}/v1/chat/completions", json=body, headers={**headers, **(extra_headers or {})}, timeout=60
    )


def _wait_until_served(base_url: str, headers: dict) -> None:
    """Gateways reload definitions from Redis every second; a forced request is never counted."""
    for _ in range(50):
        response = _chat(base_url, headers, "probe", {FORCE_HEADER: f"{NAME}=a"})
        if response.status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"the gateway does not serve {NAME}: {response.text}")


def test_router_deployments_split_as_configured_and_report_both(stack, base_url, headers, experiment, tmp_path):
    _wait_until_served(base_url, headers)
    served = {}
    for user in USERS:
        response = _chat(base_url, headers, user)
        assert response.status_code == 200, response.text
        variant = response.headers[f"x-llmesh-experiment-{NAME}"]
        served[user] = variant
        # The variant's router deployment answered: only router-b uses the huge threshold.
        assert (ROUTER_B_MARK in response.headers["x-llmesh-route-reason"]) == (variant == "b"), response.headers
    # Exactly the configured split: each user in the variant its bucket belongs to.
    assert served == {user: assign(experiment, user) for user in USERS}
    assert set(served.values()) == {"a", "b"}
    # Sticky: the same users again get the same variants.
    assert all(
        _chat(base_url, headers, user).headers[f"x-llmesh-experiment-{NAME}"] == served[user] for user in USERS[:5]
    )

    expected = {variant: list(served.values()).count(variant) for variant in ("a", "b")}
    expected["a"] += sum(served[user] == "a" for user in USERS[:5])
    expected["b"] += sum(served[user] == "b" for user in USERS[:5])
    chart = tmp_path / "chart.png"
    args = ["report", NAME, "--json", "--chart", str(chart), "--redis-url", stack.env["LLMESH_REDIS_URL"]]
    for _ in range(50):
        report = json.loads(CliRunner().invoke(experiments_cli, args).stdout)
        if report["total_requests"] >= sum(expected.values()):
            break
        time.sleep(0.1)
    variants = {variant["name"]: variant for variant in report["variants"]}
    assert {name: variants[name]["requests"] for name in ("a", "b")} == expected
    for variant in variants.values():
        latency = variant["metrics"]["latency_s"]
        assert latency["n"] == variant["requests"] and latency["mean"] > 0 and latency["ci95"]
        assert variant["output_tokens"] > 0 and variant["cost_total"] > 0
    # router-b's threshold sends everything to the small model.
    assert set(variants["b"]["models"]) == {RouterSettings().small_model}
    assert "p_value" in variants["b"]["metrics"]["latency_s"]
    assert not report["srm"]["mismatch"]
    assert chart.read_bytes().startswith(b"\x89PNG")

    # The shadow answered some of the mirrored prompts (only the 50% share, and never more than
    # two at once) and its comparisons were recorded; none of its answers was returned (above,
    # every variant-a answer came from the primary router).
    shadow = report["shadow"]
    assert shadow["mirrored"] >= 1 and shadow["errors"]["count"] == 0
    assert shadow["latency_s"]["n"] == shadow["mirrored"] and shadow["same_model"]["n"] == shadow["mirrored"]


def test_feedback_is_only_taken_from_the_requests_tenant(stack, base_url, headers, experiment):
    _wait_until_served(base_url, headers)
    request_id = _chat(base_url, headers, "feedback-user").json()["id"]
    other_tenant = {"authorization": f"Bearer {stack.create_key('e2e-other-tenant', name='feedback test')}"}
    feedback = {"request_id": request_id, "score": 1.0}
    # Another tenant's request is as unknown as a request that never was.
    foreign = httpx.post(f"{base_url}/v1/feedback", json=feedback, headers=other_tenant, timeout=10)
    assert foreign.status_code == 404 and foreign.json()["error"]["param"] == "request_id"
    own = httpx.post(f"{base_url}/v1/feedback", json=feedback, headers=headers, timeout=10)
    assert own.status_code == 200 and own.json()["experiments"] == {NAME: assign(experiment, "feedback-user")}
