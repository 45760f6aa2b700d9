"""Every model of the Triton repository names the class the python backend's stub looks up.

Triton reports a missing ``TritonPythonModel`` only when the model loads; this catches it (a
linter taking the re-export for an unused import, say) without starting the server."""

import ast
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[4] / "services" / "inference" / "model_repository"
ENTRY_POINTS = sorted(REPOSITORY.glob("*/[0-9]*/model.py"))


def test_the_repository_has_models():
    assert len(ENTRY_POINTS) >= 4, ENTRY_POINTS


@pytest.mark.parametrize("path", ENTRY_POINTS, ids=lambda path: path.parts[-3])
def test_the_entry_point_defines_triton_python_model(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = {
        alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert "TritonPythonModel" in imported, f"{path} does not import TritonPythonModel"
    modules = {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert any(module.startswith("services.inference.triton_models.") for module in modules), modules


CONFIGS = sorted(REPOSITORY.glob("*/config.pbtxt")) + sorted(REPOSITORY.glob("*/configs/gpu.pbtxt"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: str(path.relative_to(REPOSITORY)))
def test_every_config_bounds_tritons_queue(path):
    """Without max_queue_size Triton queues without end; with it a full queue is refused at once,
    which the inference service answers OVERLOADED (tests/integration/.../test_triton_queue.py)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    size = config.dynamic_batching.default_queue_policy.max_queue_size
    on_gpu = path.parent.name == "configs"
    embedder = config.name == "all-minilm-l6-v2"
    assert size == {(False, False): 256, (False, True): 16, (True, False): 1024, (True, True): 256}[on_gpu, embedder]
