"""Offline tools stay offline: no serving process imports tools/, and the router never reaches
for the inference service's code or Triton itself (it asks InferenceService.Score)."""

import ast
from pathlib import Path

import pytest

from mesh.catalog import REPO_ROOT

SERVING = ["services", "gateway", "mesh"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def sources(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((REPO_ROOT / folder).rglob("*.py"))]


@pytest.mark.parametrize("path", sources(*SERVING), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_serving_code_imports_the_offline_tools(path):
    assert not {m for m in imported_modules(path) if m == "tools" or m.startswith("tools.")}


@pytest.mark.parametrize("path", sources("services/router"), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_the_router_never_imports_the_inference_service_or_a_triton_client(path):
    banned = ("services.inference", "tritonclient")
    assert not {m for m in imported_modules(path) if m.startswith(banned)}
