"""Generated code is fresh and imports (opentelemetry-demo's protobuf check)."""

import filecmp
import importlib
import subprocess
import sys
from pathlib import Path

from mesh.settings import REPO_ROOT

GEN = REPO_ROOT / "gen"


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.py*") if "__pycache__" not in p.parts}


def test_generated_code_is_not_stale(tmp_path):
    subprocess.run([sys.executable, str(REPO_ROOT / "protos" / "generate.py"), "--out", str(tmp_path)], check=True)
    fresh, committed = _files(tmp_path), _files(GEN)
    assert fresh == committed, "gen/ is stale: run `make protos`"
    stale = [name for name in fresh if not filecmp.cmp(tmp_path / name, GEN / name, shallow=False)]
    assert not stale, f"gen/ is stale ({stale}): run `make protos`"


def test_generated_modules_import_and_define_services():
    expected = {
        "preprocess": ["PreprocessService"],
        "router": ["RouterService"],
        "inference": ["InferenceService"],
        "postprocess": ["PostprocessService"],
        "gateway": ["GatewayService"],
    }
    for domain, services in expected.items():
        pb2 = importlib.import_module(f"llmesh.{domain}.v1.{domain}_pb2")
        grpc_module = importlib.import_module(f"llmesh.{domain}.v1.{domain}_pb2_grpc")
        assert pb2.DESCRIPTOR.package == f"llmesh.{domain}.v1"
        for service in services:
            assert service in pb2.DESCRIPTOR.services_by_name
            assert hasattr(grpc_module, f"{service}Stub")
