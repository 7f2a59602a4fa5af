"""Where each idea lives, held by tests (docs/ARCHITECTURE.md, "Where things are").

- The core is pure: it imports nothing of ours but the core and the errors,
  and no module that touches files, sockets, processes or the clock.
- Reporter trust is pure policy the same way (extproc/trust: no gRPC; of
  ours it imports only trust, the errors and the entry format's field names).
- The auditor's side stands alone: its library (extproc/audit/: reader,
  verify, retention, prove, search) imports nothing of the writer or the
  server, nor a command module; `verify`, `search`, `prove` and
  `check-proof`, each run in a fresh interpreter on a log the real writer
  published, load no module of the writer (extproc.log, extproc.server) nor
  the writer's configuration, the Envoy config or the demo.
- The writer and the server may use the auditor's library (the self-audit,
  reconcile, the proof API), never a command module (the CLI, the report,
  the state file).
- The tests' in-memory store is not reachable from a store URL.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from extproc.audit.prove import Prover
from extproc.core.note import Signer
from extproc.errors import ConfigError
from extproc.store import open_store
from extproc.store.local import LocalStore
from tests.helpers import write_log

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "extproc"
LOG_ID = "pod-a"

# Standard library and third-party modules that do I/O or read the clock.
IO_MODULES = {
    "asyncio", "boto3", "botocore", "grpc", "http", "io", "os", "pathlib", "shutil", "socket",
    "subprocess", "tempfile", "threading", "time", "urllib.request",
}  # fmt: skip
# What a reader command must never load: the writer and everything only it needs.
WRITER_MODULES = ("extproc.log", "extproc.server")
WRITER_ONLY = {"extproc.envoyconf", "extproc.demo", "extproc.metrics", "extproc.processes"}


def _imports(path: Path) -> list[str]:
    """Every module `path` imports, anywhere in it (also inside functions)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            module = node.module or ""
            found.append(module)
            # `from extproc.audit import report` imports extproc.audit.report (a
            # name that is no module, `extproc.core.fields.RID`, is within its module).
            if _within(module, "extproc"):
                found.extend(f"{module}.{alias.name}" for alias in node.names)
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


CORE = sorted((PACKAGE / "core").glob("*.py"))


@pytest.mark.parametrize("path", CORE, ids=[p.stem for p in CORE])
def test_core_imports_only_the_core_and_the_errors(path: Path) -> None:
    ours = [m for m in _imports(path) if _within(m, "extproc")]
    outside = [
        m
        for m in ours
        if not (_within(m, "extproc.core") or _within(m, "extproc.errors") or m == "extproc")
    ]
    assert not outside, f"extproc/core/{path.name} imports {outside}"


@pytest.mark.parametrize("path", CORE, ids=[p.stem for p in CORE])
def test_core_does_no_io(path: Path) -> None:
    io = [m for m in _imports(path) if any(_within(m, io) for io in IO_MODULES)]
    assert not io, f"extproc/core/{path.name} imports {io}: the core does no I/O"


TRUST = sorted((PACKAGE / "trust").glob("*.py"))


@pytest.mark.parametrize("path", TRUST, ids=[p.stem for p in TRUST])
def test_trust_is_pure_policy(path: Path) -> None:
    imports = _imports(path)
    outside = [
        m
        for m in imports
        if _within(m, "extproc")
        and m != "extproc"
        and not any(
            _within(m, ok) for ok in ("extproc.trust", "extproc.errors", "extproc.core.fields")
        )
    ]
    io = [m for m in imports if any(_within(m, io) for io in IO_MODULES)]
    assert not outside, f"extproc/trust/{path.name} imports {outside}"
    assert not io, f"extproc/trust/{path.name} imports {io}: trust does no I/O"


# The auditor's package: what programs call, and what only the CLI's commands use.
AUDIT = PACKAGE / "audit"
AUDIT_LIBRARY = ("reader", "verify", "retention", "prove", "search", "tiles", "tilecheck")
AUDIT_COMMANDS = ("report", "statefile")
COMMAND_MODULES = ("extproc.cli", *(f"extproc.audit.{m}" for m in AUDIT_COMMANDS))
WRITER_SIDE = sorted([*(PACKAGE / "log").glob("*.py"), *(PACKAGE / "server").glob("*.py")])


def test_every_audit_module_is_library_or_command() -> None:
    modules = {p.stem for p in AUDIT.glob("*.py")} - {"__init__"}
    assert modules == {*AUDIT_LIBRARY, *AUDIT_COMMANDS}


@pytest.mark.parametrize("name", AUDIT_LIBRARY)
def test_audit_library_imports_no_writer_server_or_command(name: str) -> None:
    forbidden = (*WRITER_MODULES, *WRITER_ONLY, *COMMAND_MODULES, "extproc.config", "grpc")
    found = [m for m in _imports(AUDIT / f"{name}.py") if any(_within(m, f) for f in forbidden)]
    assert not found, f"extproc/audit/{name}.py imports {found}"


@pytest.mark.parametrize(
    "path", WRITER_SIDE, ids=[f"{p.parent.name}/{p.stem}" for p in WRITER_SIDE]
)
def test_writer_and_server_import_no_auditor_command(path: Path) -> None:
    found = [m for m in _imports(path) if any(_within(m, c) for c in COMMAND_MODULES)]
    assert not found, f"{path.relative_to(ROOT)} imports {found}"


def test_no_module_of_the_package_reaches_the_memory_store() -> None:
    users = [
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if path.name != "memory.py" and "extproc.store.memory" in _imports(path)
    ]
    assert not users


@pytest.mark.parametrize("url", ["memory://", "memory://x"])
def test_memory_store_is_not_reachable_from_a_url(url: str) -> None:
    with pytest.raises(ConfigError, match="unsupported store URL"):
        open_store(url)


# --- the auditor's commands in a fresh interpreter -----------------------------------------

# Runs one command the way the installed `extproc-audit` does, then records
# which modules it loaded.
CHILD = """
import json, sys
from extproc import cli
argv, out = json.loads(sys.argv[1]), sys.argv[2]
code = cli.main(argv)
with open(out, "w") as f:
    json.dump({"exit": code, "modules": sorted(sys.modules)}, f)
"""


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A log published by the real writer, and a proof of one of its entries."""
    base = tmp_path_factory.mktemp("boundaries")
    signer = Signer.generate("boundaries")
    store = LocalStore(base / "store")
    entries = [{"kind": "request", "rid": f"rid-{i}", "req": {"path": "/x"}} for i in range(12)]
    write_log(store, signer, base / "wal", LOG_ID, entries[:7], entries[7:], stop=True)
    proof = base / "entry.tlog-proof"
    proof.write_text(Prover(store, LOG_ID, signer.verifier()).inclusion(seq=3).to_proof().to_text())
    return {"store": str(base / "store"), "vkey": signer.verifier().to_text(), "proof": str(proof)}


def _commands(log: dict[str, str], out: str) -> dict[str, list[str]]:
    vkey = ["--vkey", log["vkey"]]
    return {
        "verify": ["verify", log["store"], *vkey],
        "search": ["search", log["store"], *vkey, "--request-id", "rid-3"],
        "prove": ["prove", log["store"], "--log", LOG_ID, "--seq", "5", *vkey, "--out", out],
        "check-proof": ["check-proof", log["proof"], *vkey],
    }


def _loaded(argv: list[str], tmp_path: Path) -> set[str]:
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXTPROC_AUDIT_")}
    run = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(argv), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert result["exit"] == 0, run.stdout + run.stderr
    return set(result["modules"])


COMMANDS = ["verify", "search", "prove", "check-proof"]


@pytest.mark.parametrize("command", COMMANDS)
def test_reader_command_loads_no_writer_module(
    command: str, published: dict[str, str], tmp_path: Path
) -> None:
    argv = _commands(published, str(tmp_path / "out.tlog-proof"))[command]
    loaded = _loaded(argv, tmp_path)
    writer = sorted(
        m
        for m in loaded
        if any(_within(m, w) for w in WRITER_MODULES) or m in WRITER_ONLY or m == "grpc"
    )
    assert not writer, f"{command} loaded {writer}"
    if command in ("search", "prove", "check-proof"):
        # verify's own modules (a whole store, retention, the state file) are not theirs.
        verify_own = ("extproc.audit.verify", "extproc.audit.retention", "extproc.audit.statefile")
        assert not loaded & set(verify_own)
    assert "extproc.store.memory" not in loaded
