"""``python -m support.fake_service``: the fake upstreams (support.fake_upstreams) as a process of
their own, run by mesh.server.run_service exactly as every service is, for tests of what a
process does on SIGTERM. Listens on LLMESH_LISTEN_ADDR."""

from mesh.server import run_service
from mesh.settings import MeshSettings, load_settings
from support.fake_upstreams import FakeUpstreams

if __name__ == "__main__":
    settings = load_settings(MeshSettings)
    run_service(settings, settings.listen_addr, lambda _settings: FakeUpstreams())
