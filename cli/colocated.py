"""``python -m cli.colocated``: the gateway with the four gRPC services in its own process
(``llmesh up --colocate``), for a stack that runs on one machine.

Each service still serves its gRPC address (the batch worker, probes and A/B variants call it
there), and the gateway's own calls to it are made in process (mesh.local), without the
network hop each costs otherwise. Triton and Redis stay processes of their own. The separate
services stay the default: they scale and fail one by one, and this process is one failure
domain and one event loop for all of them. This module is the composition root that may know
both the gateway and the services; neither knows the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.__main__ import main as gateway_main
from mesh.local import HostedService
from mesh.server import MeshService
from mesh.settings import MeshSettings, load_settings
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings
from services.postprocess.service import PostprocessService
from services.postprocess.settings import PostprocessSettings
from services.preprocess.service import PreprocessService
from services.preprocess.settings import PreprocessSettings
from services.router.service import RouterService
from services.router.settings import RouterSettings

# In start order: the router's scorer calls inference, so inference is hosted first and the
# router's channel to it is local too.
HOSTED: list[tuple[str, type[MeshSettings], Callable[[Any], MeshService]]] = [
    ("inference", InferenceSettings, InferenceService),
    ("preprocess", PreprocessSettings, PreprocessService),
    ("postprocess", PostprocessSettings, PostprocessService),
    ("router", RouterSettings, RouterService),
]


async def host_services() -> list[HostedService]:
    hosted = []
    for name, settings_class, factory in HOSTED:
        settings = load_settings(settings_class, service_name=name)
        # Each service is known to its callers by its address setting (``LLMESH_<NAME>_ADDR``).
        addr = getattr(settings, f"{name}_addr")
        hosted.append(await HostedService.start(factory(settings), settings, addr))
    return hosted


def main() -> None:
    gateway_main(hosting=host_services)


if __name__ == "__main__":
    main()
