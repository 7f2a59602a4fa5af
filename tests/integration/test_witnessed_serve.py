"""serve --witness against real witnesses (`extproc.witness.server`) over HTTP on 127.0.0.1.

Two witnesses, one down, quorum 1: publication goes on, the cosigned
checkpoints carry the live witness's cosignature, the down one is counted
(extproc_audit_witness_requests_total{result="unreachable"}); verify with a
quorum of two fails, then passes once both cosign. A witness that was shown
another tree for the log's origin (a split view) refuses the server's
checkpoint, and the server counts it as a conflict. No Envoy: the writer's
own `writer start` and heartbeat entries make the checkpoints.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any

from extproc import processes
from extproc.core import layout
from extproc.core.keyring import Keyring
from extproc.core.witness import WitnessedLogs
from extproc.keys import load_signer
from extproc.store import open_store
from tests.conftest import run_cli
from tests.witnesses import ModelLog, fixed_cosigner, post, running_witness

LOG_ID = "pod-a"
ORIGIN = layout.origin_for("extproc-audit", LOG_ID)
W1, W2 = fixed_cosigner("w1.example", 71), fixed_cosigner("w2.example", 72)


def metric(port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


def cosigned_sizes(store_url: str) -> list[int]:
    store = open_store(store_url)
    folder = layout.join(store.prefix, f"logs/{LOG_ID}/cosigned/")
    return sorted(int(o.key.rsplit("/", 1)[1]) for o in store.list(folder))


def serve_args(metrics_port: int, *witnesses: str, quorum: int | None = None) -> list[str]:
    args = ["--metrics-listen", f"127.0.0.1:{metrics_port}", "--heartbeat-interval", "0.3",
            "--self-audit-interval", "0"]  # fmt: skip
    for w in witnesses:
        args += ["--witness", w]
    return args + (["--witness-quorum", str(quorum)] if quorum else [])


def witness_logs(stack: Any) -> WitnessedLogs:
    return WitnessedLogs([("extproc-audit/*", Keyring.of(load_signer(stack.key_path).verifier()))])


def verify(stack: Any, *witness_keys: str, quorum: int) -> tuple[int, str]:
    args = [a for k in witness_keys for a in ("--witness", k)]
    result = run_cli(
        "verify", stack.store_url, "--vkey", stack.vkey(), *args, "--witness-quorum", str(quorum)
    )
    return result.returncode, result.stdout + result.stderr


def test_one_witness_down_publication_goes_on_and_quorum_two_needs_both(
    make_stack: Any, tmp_path: Path
) -> None:
    stack = make_stack(log_id=LOG_ID)
    down_port = processes.free_port()  # nothing listens here yet
    metrics_port = processes.free_port()
    k1, k2 = W1.witness_key().to_text(), W2.witness_key().to_text()
    with running_witness(tmp_path / "w1", W1, witness_logs(stack)) as live:
        stack.extra_args = serve_args(
            metrics_port, f"{k1}+{live.url}", f"{k2}+http://127.0.0.1:{down_port}", quorum=1
        )
        stack.start_server()
        processes.wait_until(
            lambda: len(cosigned_sizes(stack.store_url)) >= 3, "cosigned checkpoints", stack.server
        )
        processes.wait_until(
            lambda: metric(metrics_port, "extproc_audit_witness_requests_total",
                           witness="w2.example", result="unreachable") >= 1,
            "the down witness counted", stack.server,
        )  # fmt: skip
        assert (
            metric(
                metrics_port,
                "extproc_audit_witness_requests_total",
                witness="w1.example",
                result="ok",
            )
            >= 3
        )
        assert metric(metrics_port, "extproc_audit_witnessed_size") >= 1
        assert stack.stop_server() == 0
        # Every cosigned checkpoint verifies with w1 alone; a quorum of two is not met.
        code, out = verify(stack, k1, quorum=1)
        assert code == 0, out
        # prove puts the cosigned note in the proof; check-proof takes the same witnesses.
        proof = tmp_path / "e0.tlog-proof"
        made = run_cli("prove", stack.store_url, "--log", LOG_ID, "--seq", "0",
                       "--out", str(proof), "--vkey", stack.vkey())  # fmt: skip
        assert made.returncode == 0, made.stderr
        checked = run_cli("check-proof", str(proof), "--vkey", stack.vkey(), "--witness", k1)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        checked = run_cli("check-proof", str(proof), "--vkey", stack.vkey(), "--witness", k1,
                          "--witness", k2)  # fmt: skip
        assert checked.returncode == 1 and "1 of the 2 needed" in checked.stderr, checked.stderr
        code, out = verify(stack, k1, k2, quorum=2)
        assert code == 1 and "1 of the 2 needed" in out, out
        # A wrong witness key is no witness.
        wrong = fixed_cosigner("w1.example", 79).witness_key().to_text()
        code, out = verify(stack, wrong, quorum=1)
        assert code == 1 and "0 of the 1 needed" in out, out
        # Both up: the next checkpoints are cosigned by both.
        with running_witness(tmp_path / "w2", W2, witness_logs(stack)) as second:
            stack.extra_args = serve_args(
                metrics_port, f"{k1}+{live.url}", f"{k2}+{second.url}", quorum=2
            )
            before = max(cosigned_sizes(stack.store_url))
            stack.start_server()
            processes.wait_until(
                lambda: verify(stack, k1, k2, quorum=2)[0] == 0,
                "a checkpoint cosigned by both", stack.server,
            )  # fmt: skip
            assert max(cosigned_sizes(stack.store_url)) > before
            assert stack.stop_server() == 0


def test_split_view_refused_by_the_witness_and_counted(make_stack: Any, tmp_path: Path) -> None:
    """The witness was shown another tree for this origin (signed by the log's key: a
    split-view operator). The server's own checkpoints are refused: counted as conflicts."""
    stack = make_stack(log_id=LOG_ID)
    signer = load_signer(stack.key_path)
    metrics_port = processes.free_port()
    with running_witness(tmp_path / "w1", W1, witness_logs(stack)) as witness:
        other_tree = ModelLog(origin=ORIGIN, signer=signer, tag="split")
        # The witness cosigned the other tree first.
        assert post(witness.url, other_tree.body(0, 2))[0] == 200
        stack.extra_args = serve_args(metrics_port, f"{W1.witness_key().to_text()}+{witness.url}")
        stack.start_server()
        processes.wait_until(
            lambda: metric(metrics_port, "extproc_audit_witness_requests_total",
                           witness="w1.example", result="conflict") >= 2,
            "conflicts counted", stack.server,
        )  # fmt: skip
        assert metric(metrics_port, "extproc_audit_witnessed_size") == 0
        assert cosigned_sizes(stack.store_url) == []
        assert stack.stop_server() == 0
    assert "WITNESS w1.example refused our checkpoint" in stack.server_log()
    code, out = verify(stack, W1.witness_key().to_text(), quorum=1)
    assert code == 1 and "cannot be ruled out" in out, out


def test_witness_policy_refused_at_start(make_stack: Any) -> None:
    stack = make_stack(log_id=LOG_ID)
    key = W1.witness_key().to_text()
    for args, why in [
        (["--witness", key], "must be NAME+KEYID+BASE64KEY+URL"),
        (["--witness", f"{key}+http://127.0.0.1:1", "--witness-quorum", "2"], "must be 1 to 1"),
        (["--witness-quorum", "1"], "--witness-quorum needs --witness"),
    ]:
        result = run_cli(
            "serve", "--store", stack.store_url, "--key", str(stack.key_path),
            "--allow-unauthenticated", "--wal-dir", str(stack.workdir / "wal"), *args,
        )  # fmt: skip
        assert result.returncode == 2 and why in result.stderr, result.stderr
