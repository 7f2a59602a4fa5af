"""A planted object never stops a log, and a log never silently changes its key.

Real `serve` (and real Envoy) on loopback, a local store the attacker writes
into directly, and the real `verify` CLI as the auditor.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from extproc import processes
from extproc.core import layout
from extproc.core.note import Signer
from extproc.keys import write_signer
from extproc.store import open_store
from tests.conftest import read_entries, run_cli

pytestmark = pytest.mark.envoy


def _published_size(store_url: str, log_id: str) -> int:
    store = open_store(store_url)
    sizes = [
        n.size
        for o in store.list(layout.log_prefix(store.prefix, log_id) + "checkpoints/")
        if (n := layout.parse_key(store.prefix, o.key)) is not None and n.size is not None
    ]
    return max(sizes, default=0)


def _events(stack: Any, event: str) -> list[dict[str, Any]]:
    return [e for e in read_entries(stack.store_url, stack.log_id) if e.get("event") == event]


def test_planted_claim_at_the_next_key_does_not_stop_the_mesh(make_stack: Any) -> None:
    # The review's attack: an object at logs/<id>/claims/<next seq> made the
    # writer stop publishing, answer every request 503 and go NOT_SERVING.
    stack = make_stack(extra_args=["--bundle-max-age", "0.3"]).start()
    assert len(stack.send(10).request_ids) == 10
    processes.wait_until(
        lambda: _published_size(stack.store_url, stack.log_id) >= 21, "first publication"
    )
    time.sleep(0.5)  # nothing more is due: the next claim position is fixed
    nxt = _published_size(stack.store_url, stack.log_id)
    store = open_store(stack.store_url)
    planted = layout.claim_key(store.prefix, stack.log_id, nxt)
    store.put_once(planted, b'{"bundle":"planted"}\n', None)

    result = stack.send(20)
    assert len(result.request_ids) == 20 and result.errors == 0  # no 503, nothing refused
    assert processes.grpc_serving(f"127.0.0.1:{stack.health_port}")
    assert stack.stop_server(signal.SIGTERM) == 0
    log = stack.server_log()
    assert "foreign object" in log and "PUBLISHING STOPPED" not in log

    records = [
        e for e in read_entries(stack.store_url, stack.log_id) if e.get("event") == "foreign"
    ]
    assert [r["object"] for r in records] == [layout.relative(store.prefix, planted)]
    assert records[0]["epoch"] == 2
    verify = stack.verify()
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "warning" in verify.stdout and "recorded by the writer" in verify.stdout


def test_restart_under_another_key_is_recorded_and_needs_both_keys(
    make_stack: Any, tmp_path: Path
) -> None:
    stack = make_stack()
    stack.start_server()
    stack.stop_server()
    old = Signer.from_text(stack.key_path.read_text().strip())
    new = Signer.generate("e2e-audit-2027")
    stack.key_path.unlink()
    write_signer(stack.key_path, new)
    stack.start_server()
    assert stack.stop_server() == 0
    assert "continues under a new signing key" in stack.server_log()

    (rotate,) = [
        e for e in read_entries(stack.store_url, stack.log_id) if e.get("event") == "rotate"
    ]
    assert rotate["old_key"] == f"{old.name}+{old.key_id.hex()}"
    assert rotate["new_key"] == f"{new.name}+{new.key_id.hex()}"

    both = run_cli(
        "verify", stack.store_url, "--vkey", old.verifier().to_text(),
        "--vkey", new.verifier().to_text(),
    )  # fmt: skip
    assert both.returncode == 0, both.stdout
    old_only = run_cli("verify", stack.store_url, "--vkey", old.verifier().to_text())
    assert old_only.returncode == 1
    ring = tmp_path / "audit.keyring"
    ring.write_text(
        f"# rotated today\n{old.verifier().to_text()} logs={stack.log_id}\n"
        f"{new.verifier().to_text()} logs=e2e*\n"
    )
    assert run_cli("verify", stack.store_url, "--keyring", str(ring)).returncode == 0
    assert run_cli("verify", stack.store_url, "--vkey", f"@{ring}").returncode == 0
    scoped_away = tmp_path / "other.keyring"
    scoped_away.write_text(f"{old.verifier().to_text()}\n{new.verifier().to_text()} logs=shop.*\n")
    wrong_scope = run_cli("verify", stack.store_url, "--keyring", str(scoped_away))
    assert wrong_scope.returncode == 1
    assert "not trusted for this log" in wrong_scope.stdout
