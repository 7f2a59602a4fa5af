"""`extproc-audit health` (the image's HEALTHCHECK) and `keygen --if-missing` (first start)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from extproc import processes
from extproc.health import check_health
from extproc.server.app import EXT_PROC_SERVICE
from tests.conftest import run_cli


def test_health_serving_server_exits_0(make_stack: Any) -> None:
    stack = make_stack()
    stack.start_server()
    address = f"127.0.0.1:{stack.grpc_port}"
    result = run_cli("health", "--addr", address)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"{address} (server): SERVING"
    assert check_health(address, EXT_PROC_SERVICE).serving


def test_health_unknown_service_is_unhealthy(make_stack: Any) -> None:
    stack = make_stack()
    stack.start_server()
    result = run_cli("health", "--addr", f"127.0.0.1:{stack.grpc_port}", "--service", "nope")
    assert result.returncode == 1
    assert "SERVICE_UNKNOWN" in result.stdout


def test_health_unreachable_server_exits_1_not_2() -> None:
    # Docker reads 1 as unhealthy and reserves 2: a down server must be 1.
    port = processes.free_port()
    result = run_cli("health", "--addr", f"127.0.0.1:{port}", "--timeout", "0.5")
    assert result.returncode == 1
    assert "UNREACHABLE" in result.stdout


def test_keygen_if_missing_keeps_the_first_key(tmp_path: Path) -> None:
    key, vkey = tmp_path / "k" / "signing.key", tmp_path / "pub" / "verifier.key"
    args = ("keygen", "--name", "demo", "--out", str(key), "--if-missing", "--vkey-out", str(vkey))
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    secret = key.read_bytes()
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert key.read_bytes() == secret  # a restart never replaces the signing key
    assert second.stdout == first.stdout
    assert vkey.read_text() == first.stdout
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(vkey.stat().st_mode) == 0o644
    assert secret.decode().strip() not in vkey.read_text()


def test_keygen_without_if_missing_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    assert run_cli("keygen", "--name", "demo", "--out", str(key)).returncode == 0
    secret = key.read_bytes()
    result = run_cli("keygen", "--name", "demo", "--out", str(key))
    assert result.returncode == 2
    assert "refusing to overwrite" in result.stderr
    assert key.read_bytes() == secret
