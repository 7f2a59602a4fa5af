"""`extproc-audit witness` over real HTTP on 127.0.0.1 (c2sp.org/tlog-witness).

The command as users run it (a child process: key file, state dir, SIGTERM),
and the server in a thread for the budgets: every answer the spec names, a
witness restarted on its state refusing a rollback, bodies without a length
or over the bound, other methods and paths, and connections past the bound.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from extproc.core.cosignature import WitnessKey, WitnessPolicy
from extproc.core.witness import MAX_BODY_BYTES
from tests.conftest import run_cli
from tests.witnesses import (
    LOG_SIGNER,
    ORIGIN,
    ModelLog,
    fixed_cosigner,
    fixed_signer,
    post,
    running_witness,
)

WITNESS = fixed_cosigner("witness.example/w1", 51)
OVER = MAX_BODY_BYTES + 1


def start_cli_witness(tmp_path: Path, key: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "extproc", "witness", "--key", str(key),
         "--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1:0",
         "--log", "audit.example/*", LOG_SIGNER.verifier().to_text()],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "serving http://127.0.0.1:" in line, proc.stderr.read() if proc.stderr else line
    return proc, line.split("serving ", 1)[1].strip().removesuffix("/add-checkpoint")


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=20)


def test_witness_command_cosigns_and_refuses_a_rollback_after_restart(tmp_path: Path) -> None:
    keygen = run_cli(
        "witness-keygen", "--name", "witness.example/cli", "--out", str(tmp_path / "w.key")
    )
    assert keygen.returncode == 0, keygen.stderr
    witness_key = WitnessKey.from_text(keygen.stdout.strip())
    assert (tmp_path / "w.key").stat().st_mode & 0o777 == 0o600
    log = ModelLog()
    proc, url = start_cli_witness(tmp_path, tmp_path / "w.key")
    try:
        status, _, body = post(url, log.body(0, 10))
        assert status == 200
        policy = WitnessPolicy.of([witness_key])
        _, found = policy.check(log.note(10) + body.encode())
        assert abs(found[0].timestamp - time.time()) < 300
        assert post(url, log.body(10, 20))[0] == 200
    finally:
        assert stop(proc) == 0
    proc, url = start_cli_witness(tmp_path, tmp_path / "w.key")
    try:
        # Restarted on its state: the tree of size 20 is remembered.
        assert post(url, log.body(0, 10)) == (409, "text/x.tlog.size", "20\n")
        assert post(url, ModelLog(tag="x").body(20, 20))[0] == 409
        assert post(url, log.body(20, 33))[0] == 200
    finally:
        assert stop(proc) == 0


def test_second_witness_on_one_state_dir_refused(tmp_path: Path) -> None:
    run_cli("witness-keygen", "--name", "w", "--out", str(tmp_path / "w.key"))
    proc, _ = start_cli_witness(tmp_path, tmp_path / "w.key")
    try:
        second = run_cli(
            "witness", "--key", str(tmp_path / "w.key"), "--state-dir", str(tmp_path / "state"),
            "--listen", "127.0.0.1:0", "--log", ORIGIN, LOG_SIGNER.verifier().to_text(),
        )  # fmt: skip
        assert second.returncode == 2 and "in use by another process" in second.stderr
    finally:
        stop(proc)


def test_witness_refuses_a_log_signing_key_as_its_own(tmp_path: Path) -> None:
    run_cli("keygen", "--name", "log", "--out", str(tmp_path / "log.key"))
    result = run_cli(
        "witness", "--key", str(tmp_path / "log.key"), "--state-dir", str(tmp_path / "s"),
        "--log", ORIGIN, LOG_SIGNER.verifier().to_text(),
    )  # fmt: skip
    assert result.returncode == 2 and "type 0x04" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_refusal_over_http(tmp_path: Path) -> None:
    log, fork = ModelLog(), ModelLog(tag="x")
    with running_witness(tmp_path, WITNESS) as server:
        url = server.url
        assert post(url, log.body(0, 8))[0] == 200
        assert post(url, log.body(3, 9))[:2] == (409, "text/x.tlog.size")
        assert post(url, fork.body(8, 8))[0] == 409
        assert post(url, fork.body(8, 12))[0] == 422
        assert post(url, ModelLog(origin="nobody.example/x").body(0, 2))[0] == 404
        assert post(url, ModelLog(signer=fixed_signer("audit.example", 77)).body(8, 9))[0] == 403
        assert post(url, b"old 0\n")[0] == 400
        assert post(url, log.body(0, 8), path="/other")[0] == 404


def raw_request(address: tuple[str, int], data: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\n\r\n", b" 411 "),
        (b"POST /add-checkpoint HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % OVER, b" 413 "),
        (b"POST /add-checkpoint HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b" 400 "),
        (b"POST /add-checkpoint HTTP/1.1\r\nContent-Length: -5\r\n\r\n", b" 411 "),
        (b"GET /add-checkpoint HTTP/1.1\r\n\r\n", b" 405 "),
    ],
    ids=["no_length", "over_bound", "chunked", "negative_length", "get"],
)  # fmt: skip
def test_request_over_budget_refused_before_reading(
    tmp_path: Path, request_head: bytes, status: bytes
) -> None:
    with running_witness(tmp_path, WITNESS) as server:
        answer = raw_request(server.server_address[:2], request_head)  # type: ignore[arg-type]
        assert status in answer.split(b"\r\n", 1)[0]


def test_keep_alive_serves_several_requests(tmp_path: Path) -> None:
    log = ModelLog()
    with running_witness(tmp_path, WITNESS) as server:
        host, port = server.server_address[:2]
        conn = http.client.HTTPConnection(str(host), int(port), timeout=10)
        for old, new in [(0, 3), (3, 6), (6, 9)]:
            conn.request("POST", "/add-checkpoint", log.body(old, new))
            response = conn.getresponse()
            assert response.status == 200
            response.read()
        conn.close()


def test_connections_past_the_bound_closed(tmp_path: Path) -> None:
    with running_witness(tmp_path, WITNESS, max_connections=2) as server:
        address = server.server_address[:2]
        idle = [socket.create_connection(address, timeout=10) for _ in range(2)]  # type: ignore[arg-type]
        time.sleep(0.3)  # both accepted and holding their slots
        with socket.create_connection(address, timeout=10) as extra:  # type: ignore[arg-type]
            extra.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert extra.recv(100) == b""  # closed unanswered
        for sock in idle:
            sock.close()
        time.sleep(0.3)
        answer = raw_request(address, b"GET / HTTP/1.1\r\n\r\n")  # type: ignore[arg-type]
        assert b" 405 " in answer.split(b"\r\n", 1)[0]
