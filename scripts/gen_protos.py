#!/usr/bin/env python3
"""Generate the committed Python modules of protos/ (the live proof API).

python scripts/gen_protos.py          # regenerate extproc/api/*_pb2*.py[i]
python scripts/gen_protos.py --check  # exit 1 if the committed files differ

The generated code is committed, so installing the package needs no protoc.
It must come from grpcio-tools==1.74.0 (the `protos` extra): its protoc
(protobuf 31.1) writes code that checks for a protobuf runtime >= 6.31.1,
the floor of pyproject's `protobuf>=6.31,<8`, and its gRPC plugin code
checks for grpcio >= 1.74. A newer grpcio-tools would raise both floors.
grpcio-tools 1.74.0 itself wants protobuf<7, so run this script from a venv
of its own (it imports nothing from extproc), as .ci/run does:

    python -m venv /tmp/protoc && /tmp/protoc/bin/pip install grpcio-tools==1.74.0
    /tmp/protoc/bin/python scripts/gen_protos.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
GRPC_TOOLS_VERSION = "1.74.0"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out: Path) -> list[Path]:
    """Run protoc on every .proto under protos/ into `out`; return the files written."""
    from importlib.metadata import version

    from grpc_tools import protoc  # type: ignore[import-untyped]

    if version("grpcio-tools") != GRPC_TOOLS_VERSION:
        sys.exit(
            f"gen_protos: need grpcio-tools=={GRPC_TOOLS_VERSION} (see this script's docstring), "
            f"found {version('grpcio-tools')}"
        )
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    # grpc_tools ships the well-known types (google/protobuf/*.proto).
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        sys.exit("gen_protos: protoc failed")
    return sorted(p for p in out.rglob("*") if p.name.endswith(GENERATED_SUFFIXES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        stale = []
        for path in generate(out):
            target = ROOT / path.relative_to(out)
            if not target.exists() or target.read_bytes() != path.read_bytes():
                stale.append(target)
                if not args.check:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)
    for target in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {target.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
