"""Triton entry point of an engine model; the code is in services/inference/triton_models/engine.py."""

import locale
import os
import sys
from pathlib import Path

# The stub's interpreter starts with an ASCII locale and torch's inductor then fails at import
# (UnicodeDecodeError); LC_ALL in the environment does not reach the stub, setlocale does.
locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
# vLLM's engine core stays in this process: the stub is no Python executable that `spawn` can re-run.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# The stub runs isolated (PYTHONPATH ignored): the server names the engine's environment (vLLM,
# numpy 2) in this variable. The repository root (5 levels up) covers an image that sets nothing.
_first = [p for p in os.environ.get("LLMESH_ENGINE_SYS_PATH", "").split(os.pathsep) if p]
sys.path[:] = list(dict.fromkeys([*_first, str(Path(__file__).resolve().parents[5]), *sys.path]))
# Subprocesses the engine starts (vLLM inspects model classes in one) use that environment too.
sys.executable = os.environ.get("LLMESH_ENGINE_PYTHON", sys.executable)

# Only once sys.path names the engine's environment; the stub looks this name up in this module.
from services.inference.triton_models.engine import TritonPythonModel  # noqa: E402

__all__ = ["TritonPythonModel"]
