"""The unit lane's rule, held: a test here starts no process, no server and
listens on no port (pure code, in-memory stores, files under tmp_path).

Each test runs with the ways out patched to fail at once, naming the test's
lane: a test that needs a subprocess, the CLI as a process, a gRPC server,
Envoy or an S3 server belongs in tests/integration/. (The writer's fdatasync
runs in a thread, extproc/log/syncer.py: a WAL under tmp_path is allowed.)
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
import grpc.aio
import pytest

_FORBIDDEN = "the unit lane starts no process or server: move this test to tests/integration/"


def _refuse(what: str) -> Callable[..., NoReturn]:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError(f"{what}: {_FORBIDDEN}")

    return refuse


def _listen(sock: socket.socket, *args: Any) -> NoReturn:
    raise AssertionError(f"listen on {sock.getsockname()!r}: {_FORBIDDEN}")


@pytest.fixture(autouse=True)
def _no_process_or_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("subprocess"))
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _refuse(f"os.{name}"))
    monkeypatch.setattr(grpc, "server", _refuse("grpc.server"))
    monkeypatch.setattr(grpc.aio, "server", _refuse("grpc.aio.server"))
    monkeypatch.setattr(socket.socket, "listen", _listen)
