"""python -m services.router: the router gRPC service."""

from mesh.server import run_service
from mesh.settings import load_settings
from services.router.service import RouterService
from services.router.settings import RouterSettings


def main() -> None:
    settings = load_settings(RouterSettings)
    run_service(settings, settings.router_addr, RouterService)


if __name__ == "__main__":
    main()
