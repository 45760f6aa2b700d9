"""python -m services.postprocess: the postprocess gRPC service."""

from mesh.server import run_service
from mesh.settings import load_settings
from services.postprocess.service import PostprocessService
from services.postprocess.settings import PostprocessSettings


def main() -> None:
    settings = load_settings(PostprocessSettings)
    run_service(settings, settings.postprocess_addr, PostprocessService)


if __name__ == "__main__":
    main()
