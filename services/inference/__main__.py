"""python -m services.inference: the inference gRPC service."""

from mesh.server import run_service
from mesh.settings import load_settings
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings


def main() -> None:
    settings = load_settings(InferenceSettings)
    run_service(settings, settings.inference_addr, InferenceService)


if __name__ == "__main__":
    main()
