"""A C2SP client not written here verifies our published logs (issue 19, item 5).

tests/go/tlogclient is a small Go program over golang.org/x/mod/sumdb/note
and sumdb/tlog (Debian's golang-golang-x-mod-dev, built in GOPATH mode with no
network): it checks the `checkpoint` signature with the log's verifier key,
the hash tiles against the checkpoint's root, every entry's hash against the
level-0 tiles, and inclusion proofs of sampled entries. It reads a demo log
(a real `serve` behind a real Envoy) from its local store, and a log in an S3
bucket (moto) over plain HTTP GETs, as a monitor would. A byte flipped in a
tile, an entry bundle or the checkpoint makes it fail.

Go is part of CI (.ci/run installs golang-go and golang-golang-x-mod-dev): on CI
a missing toolchain fails these tests; elsewhere they skip and say why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from extproc.audit.tilecheck import verify_tiles
from extproc.core import layout
from extproc.core.keyring import Keyring
from extproc.core.layout import TileName
from extproc.core.note import Signer
from extproc.keys import load_signer
from extproc.store.base import RetentionPolicy
from extproc.store.local import LocalStore
from extproc.store.s3 import S3Store
from tests.conftest import MotoServer
from tests.helpers import ORIGIN_PREFIX, write_log

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "tests" / "go" / "tlogclient" / "main.go"
GOPATH = Path("/usr/share/gocode")  # Debian's Go sources: golang-golang-x-mod-dev
X_MOD = GOPATH / "src" / "golang.org" / "x" / "mod" / "sumdb" / "tlog"


def _go() -> str | None:
    return os.environ.get("EXTPROC_GO") or shutil.which("go")


@pytest.fixture(scope="session")
def tlogclient(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go client, built offline against Debian's golang.org/x/mod."""
    go = _go()
    missing = []
    if go is None:
        missing.append("no `go` on PATH (apt-get install golang-go)")
    if not X_MOD.is_dir():
        missing.append(f"no {X_MOD} (apt-get install golang-golang-x-mod-dev)")
    if missing:
        why = "C2SP interop client cannot be built: " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(why + " (.ci/run installs both)")
        pytest.skip(why)
    assert go is not None
    out = tmp_path_factory.mktemp("tlogclient")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(GOPATH),
        "GOCACHE": str(out / "cache"),
        "GOPROXY": "off",
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    built = subprocess.run(
        [go, "build", "-o", str(out / "tlogclient"), str(CLIENT)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    return out / "tlogclient"


def _client(binary: Path, prefix: str, vkey: str, origin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), "-prefix", prefix, "-vkey", vkey, "-origin", origin, "-sample", "16"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _ok(run: subprocess.CompletedProcess[str], size: int) -> None:
    assert run.returncode == 0, run.stdout + run.stderr
    assert f" size={size} entries={size} " in run.stdout, run.stdout


@pytest.mark.envoy
def test_go_client_verifies_a_demo_log(tlogclient: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "EXTPROC_AUDIT_METRICS_LISTEN": "off",
        "EXTPROC_AUDIT_DRAIN_DELAY": "0",
    }
    demo = subprocess.run(
        [sys.executable, "-m", "extproc", "demo", "--requests", "300", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout + demo.stderr
    log_dir = workdir / "store" / "logs" / "demo"
    size = max(int(p.name) for p in (log_dir / "checkpoints").iterdir())
    assert size > 256  # full tiles and partial ones
    vkey = load_signer(workdir / "signing.key").verifier().to_text()
    _ok(_client(tlogclient, str(log_dir), vkey, f"{ORIGIN_PREFIX}/demo"), size)


@pytest.mark.s3
def test_go_client_verifies_an_s3_log_over_http(
    tlogclient: Path, moto: MotoServer, tmp_path: Path, signer: Signer
) -> None:
    bucket = moto.new_bucket()
    store = S3Store(bucket, "audit/prod")
    batches = [[{"kind": "request", "rid": f"r{i}-{j}"} for j in range(111)] for i in range(7)]
    write_log(
        store, signer, tmp_path / "wal", "web", *batches,
        tiles=True, retention=RetentionPolicy("GOVERNANCE", 1), stop=True,
    )  # fmt: skip
    size = 7 * 111 + 1  # and the stop entry
    # Read-only GETs without credentials, as a tlog-tiles log is served to monitors.
    public_read = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/audit/prod/logs/*",
            }
        ],
    }
    moto.s3().put_bucket_policy(Bucket=bucket, Policy=json.dumps(public_read))
    prefix = f"{moto.endpoint}/{bucket}/audit/prod/logs/web"  # path-style GETs, as a monitor
    _ok(_client(tlogclient, prefix, signer.verifier().to_text(), f"{ORIGIN_PREFIX}/web"), size)
    # Ours from the same tiles, with every version of `checkpoint` as its history.
    report = verify_tiles(store, "web", Keyring.of(signer.verifier()), ORIGIN_PREFIX)
    assert report.ok and report.entries == size, [str(f) for f in report.findings]
    assert report.checkpoints == 8  # seven rounds and the stop


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))


TAMPER: dict[str, Callable[[Path], None]] = {
    "hash-tile": lambda log: _flip(log / TileName(0, 1).path(), 100),
    "partial-hash-tile": lambda log: _flip(log / TileName(1, 0, 2).path(), 5),
    "entry-bundle": lambda log: _flip(log / TileName(layout.ENTRIES_LEVEL, 0).path(), 40),
    "partial-entry-bundle": lambda log: _flip(
        log / TileName(layout.ENTRIES_LEVEL, 2, 89).path(), 300
    ),
    "checkpoint-root": lambda log: _flip(log / "checkpoint", len("extproc-audit/web\n601\n") + 3),
    "checkpoint-signature": lambda log: _flip(log / "checkpoint", -10),
}


@pytest.mark.parametrize("tamper", TAMPER.values(), ids=TAMPER)
def test_go_client_detects_a_tampered_log(
    tlogclient: Path, tmp_path: Path, signer: Signer, tamper: Callable[[Path], None]
) -> None:
    store = LocalStore(tmp_path / "store")
    batches = [[{"kind": "request", "rid": f"r{i}-{j}"} for j in range(100)] for i in range(6)]
    write_log(store, signer, tmp_path / "wal", "web", *batches, tiles=True, stop=True)
    log_dir = tmp_path / "store" / "logs" / "web"
    vkey, origin = signer.verifier().to_text(), f"{ORIGIN_PREFIX}/web"
    _ok(_client(tlogclient, str(log_dir), vkey, origin), 601)
    tamper(log_dir)
    run = _client(tlogclient, str(log_dir), vkey, origin)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr.startswith("tlogclient: "), run.stderr
