"""What the Triton models share: where the weights are, loading them, talking to Triton."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]
# Every model (tests, a quick experiment) can be pointed at another HF directory without
# editing config.pbtxt: a per-model variable named by the config's `model_dir_env`, then this.
GLOBAL_OVERRIDE_ENV = "LLMESH_MODEL_DIR_OVERRIDE"

try:  # only importable inside the python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # unit tests, tooling
    pb_utils = None  # type: ignore[assignment]


def check_numpy() -> None:
    """Fail loudly at model load: under numpy 2 the stub returns empty tensors without an error."""
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise RuntimeError(
            f"numpy {numpy.__version__} from {numpy.__file__} was imported inside the Triton python "
            "backend stub, which is built against numpy 1.x (output tensors would arrive empty). "
            "Put a numpy<2 environment first on LLMESH_TRITON_SYS_PATH."
        )


def config_param(model_config: dict[str, Any], key: str, default: str | None = None) -> str | None:
    value = model_config.get("parameters", {}).get(key, {}).get("string_value")
    return value if value not in (None, "") else default


def resolve_model_dir(model_config: dict[str, Any], version: str | int | None = None) -> Path:
    """The HF directory for this model: env override, else `model_dir[.v<version>]` from config.

    Relative paths are relative to the repository root so config.pbtxt stays portable.
    """
    env_name = config_param(model_config, "model_dir_env")
    configured = config_param(model_config, f"model_dir.v{version}") if version else None
    raw = (
        (os.environ.get(env_name) if env_name else None)
        or os.environ.get(GLOBAL_OVERRIDE_ENV)
        or configured
        or config_param(model_config, "model_dir")
    )
    if not raw:
        raise ValueError(f"model {model_config.get('name')!r}: no `model_dir` parameter in config.pbtxt")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model {model_config.get('name')!r}: {path} is not a Hugging Face model directory "
            f"(no config.json); train it (python -m models.train) or set {env_name or GLOBAL_OVERRIDE_ENV}"
        )
    return path


def load_causal_lm(path: Path, torch_threads: int = 1) -> tuple[Any, Any]:
    """(model, tokenizer) in float32 eval mode; any HF causal-LM directory works."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # tqdm bars would be written into the server log
    torch.set_num_threads(torch_threads)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model, tokenizer


def context_length(model: Any) -> int | None:
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class Log:
    """Triton's logger inside the stub (lines land in the server log), std logging outside."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._std = logging.getLogger(f"llmesh.triton.{name}")

    def _emit(self, level: str, msg: str) -> None:
        line = f"[{self.name}] {msg}"
        logger = getattr(pb_utils, "Logger", None) if pb_utils else None
        if logger is not None:
            getattr(logger, f"log_{level}")(line)
        else:
            getattr(self._std, "warning" if level == "warn" else level)(line)

    def info(self, msg: str) -> None:
        self._emit("info", msg)

    def warn(self, msg: str) -> None:
        self._emit("warn", msg)

    def error(self, msg: str) -> None:
        self._emit("error", msg)


def parse_model_config(args: dict[str, Any]) -> dict[str, Any]:
    return json.loads(args["model_config"])
