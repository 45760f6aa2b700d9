"""Triton entry point of the embedding model; the code is in services/inference/triton_models/embedder.py."""

import locale
import os
import sys
from pathlib import Path

# As for the engine models (their model.py says why): a UTF-8 locale before torch is imported,
# and the engine's environment first on sys.path.
locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
_first = [p for p in os.environ.get("LLMESH_ENGINE_SYS_PATH", "").split(os.pathsep) if p]
sys.path[:] = list(dict.fromkeys([*_first, str(Path(__file__).resolve().parents[5]), *sys.path]))
# Subprocesses the engine starts (vLLM inspects model classes in one) use that environment too.
sys.executable = os.environ.get("LLMESH_ENGINE_PYTHON", sys.executable)

# Only once sys.path names the engine's environment; the stub looks this name up in this module.
from services.inference.triton_models.embedder import TritonPythonModel  # noqa: E402

__all__ = ["TritonPythonModel"]
