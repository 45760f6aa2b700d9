"""The real stack (Redis, collector, Triton, four services, gateway), started once per session."""

import json
import secrets

import pytest

from textkit.safety.lexicon import DEFAULT_EN
from tools.stack import Deployment, Ports, Stack

# A second router deployment, the B of the e2e A/B test (tests/e2e/test_experiments.py): a
# threshold no prompt's perplexity reaches, so its route reasons are recognisable.
ROUTER_B = Deployment("router", "b", {"LLMESH_ROUTE_POLICY": "perplexity", "LLMESH_PERPLEXITY_THRESHOLD": "1000000"})


# The admin API is on in the e2e stack (tests/e2e/test_safety_tenancy.py uses it).
ADMIN_KEY = f"e2e-admin-{secrets.token_hex(16)}"


@pytest.fixture(scope="session")
def stack(tmp_path_factory, triton, otlp_sink):
    run_dir = tmp_path_factory.mktemp("run")
    # An output lexicon the e2e tests may edit while the stack runs (lexicons reload live).
    lexicon = run_dir / "output-lexicon.txt"
    lexicon.write_text("# e2e output terms\n", encoding="utf-8")
    env = {
        "LLMESH_ADMIN_KEY": ADMIN_KEY,
        "LLMESH_OUTPUT_LEXICON_EN": json.dumps([*map(str, DEFAULT_EN), str(lexicon)]),
        "LLMESH_AUDIT_INCLUDE_TEXT": "true",
        # Four engines share two cores here, and a first token can take seconds while another
        # test's batch runs: the default 5 s would open a breaker on the test machine's load and
        # fail requests over (the breaker's slowness rule has its own unit tests).
        "LLMESH_BREAKER_SLOW_TTFT_S": "60",
    }
    # With mutual TLS on every hop between the gateway and the services, so every e2e test
    # goes through it.
    # The session's tritonserver (its engines start once for every tier); its spans go to the
    # stack's collector like those of every other process.
    stack = Stack(
        ports=Ports.free(), run_dir=run_dir, deployments=[ROUTER_B], tls=True, extra_env=env, external_triton=triton
    )
    otlp_sink.forward_to = f"http://127.0.0.1:{stack.ports.collector}/v1/traces"
    with stack as running:
        yield running
    otlp_sink.forward_to = None


@pytest.fixture(scope="session")
def api_key(stack):
    """A key of tenant "e2e", made the way `llmesh keys create` makes one."""
    return stack.create_key("e2e", name="e2e session")


@pytest.fixture(scope="session")
def headers(api_key):
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture(scope="session")
def base_url(stack):
    return stack.gateway_url
