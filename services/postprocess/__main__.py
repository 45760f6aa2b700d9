from mesh.server import run_service
from mesh.settings import load_settings
from services.postprocess.service import PostprocessService
from services.postprocess.settings import PostprocessSettings

settings = load_settings(PostprocessSettings)
run_service(settings, settings.postprocess_addr, PostprocessService)
