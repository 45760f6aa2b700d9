"""The real stack (Redis, collector, Triton, four services, gateway), started once per session."""

import pytest

from cli.stack import Ports, Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    with Stack(ports=Ports.free(), run_dir=tmp_path_factory.mktemp("run")) as running:
        yield running


@pytest.fixture(scope="session")
def base_url(stack):
    return stack.gateway_url
