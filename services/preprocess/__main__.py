"""python -m services.preprocess: the preprocess gRPC service."""

from mesh.server import run_service
from mesh.settings import load_settings
from services.preprocess.service import PreprocessService
from services.preprocess.settings import PreprocessSettings


def main() -> None:
    settings = load_settings(PreprocessSettings)
    run_service(settings, settings.preprocess_addr, PreprocessService)


if __name__ == "__main__":
    main()
