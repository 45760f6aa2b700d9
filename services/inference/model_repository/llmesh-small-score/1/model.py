"""Triton entry point; the code is in services/inference/triton_models/score.py."""
import os
import sys
from pathlib import Path

# The stub's Python runs isolated (PYTHONPATH ignored), so the server passes its sys.path in
# the environment. It goes first: the venv's numpy<2 must win over the base interpreter's
# numpy 2, under which output tensors arrive empty without any error. The repo root (5 levels
# up) covers an image where the variable is not set.
_first = [p for p in os.environ.get("LLMESH_TRITON_SYS_PATH", "").split(os.pathsep) if p]
sys.path[:] = list(dict.fromkeys([*_first, str(Path(__file__).resolve().parents[5]), *sys.path]))

from services.inference.triton_models.score import TritonPythonModel  # noqa: E402,F401
