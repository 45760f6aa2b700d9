"""Generate the Python code for every proto: `python protos/generate.py [--out DIR]` (default gen/).

The one command that writes gen/; tests/unit/test_protos.py runs it into a temp dir and fails
if the committed code differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("llmesh/**/*.proto"))
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf well-known types
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_ROOT.parent / "gen")
    generate(parser.parse_args().out)
