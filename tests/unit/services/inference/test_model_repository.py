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
def test_only_the_embedder_has_a_dynamic_batcher_and_it_bounds_tritons_queue(path):
    """A decoupled engine behind Triton 2.51's dynamic batcher had some of a burst's requests
    held for 0.5 s steps (direct at 32 concurrent: p99 1-4.5 s against 67-98 ms without it), so
    the engines have none, as in NVIDIA's vLLM backend; what waits for them is bounded by the
    inference service's per-model admission. The embedder bounds Triton's queue: a full queue is
    refused at once, which the inference service answers OVERLOADED (test_triton_queue.py)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    if config.model_transaction_policy.decoupled:
        assert not config.HasField("dynamic_batching")
        return
    assert config.name == "all-minilm-l6-v2"
    on_gpu = path.parent.name == "configs"
    assert config.dynamic_batching.default_queue_policy.max_queue_size == (256 if on_gpu else 16)
