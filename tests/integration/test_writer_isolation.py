"""A planted object never stops a log, a log never silently changes its key, and a
writer under another key never changes the verdict on what the first one published.

Real `serve` (and real Envoy) on loopback, a local store the attacker writes
into directly, and the real `verify` CLI as the auditor; the writer-under-
another-key cases run the real writer in-process (tests/helpers.py) on the
local store and on S3 (moto).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from extproc import processes
from extproc.audit.verify import verify_store
from extproc.core import layout
from extproc.core.findings import ERROR, WARNING, all_ok
from extproc.core.keyring import Keyring
from extproc.core.note import Signer
from extproc.errors import ForkError
from extproc.keys import write_signer
from extproc.store import open_store
from extproc.store.base import ObjectStore
from extproc.store.local import LocalStore
from tests.attacks import PLANTED_CLAIMS, Unlisted, plant_claims
from tests.conftest import MotoServer, read_entries, run_cli
from tests.helpers import write_log


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


@pytest.mark.envoy
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


@pytest.mark.envoy
def test_400_planted_claims_and_names_off_the_layout_do_not_stop_the_mesh(
    make_stack: Any,
) -> None:
    # The review's attack 4: 400 claims planted at the next position stopped
    # publication for more than 120 s (each 30 s back-off stepped over 8); objects
    # off the layout made the log INVALID for good, and were never recorded.
    stack = make_stack(extra_args=["--bundle-max-age", "0.3"]).start()
    assert len(stack.send(10).request_ids) == 10
    processes.wait_until(
        lambda: _published_size(stack.store_url, stack.log_id) >= 11, "first publication"
    )
    time.sleep(0.5)
    nxt = _published_size(stack.store_url, stack.log_id)
    store = open_store(stack.store_url)
    plant_claims(store, stack.log_id, nxt, PLANTED_CLAIMS)
    odd = ["entries/notes.txt", "x/" + "y" * 200, "checkpoints/\x1b[2J\rVALID"]
    for name in odd:
        store.put_once(f"{layout.log_prefix(store.prefix, stack.log_id)}{name}", b"", None)

    result = stack.send(20)
    assert len(result.request_ids) == 20 and result.errors == 0  # no 503, nothing refused
    processes.wait_until(  # it took minutes of back-off
        lambda: _published_size(stack.store_url, stack.log_id) >= nxt + 20,
        "publication after the plants",
    )
    assert stack.stop_server(signal.SIGTERM) == 0
    assert "PUBLISHING STOPPED" not in stack.server_log()
    (record,) = _events(stack, "foreign")  # one entry for them all, at the first collision
    assert record["count"] >= 400 and record["epoch"] == 401 and len(record["objects"]) == 16
    # A restart lists the whole log: every name off the layout is recorded then.
    stack.start_server()
    assert stack.stop_server(signal.SIGTERM) == 0
    restart = _events(stack, "foreign")[-1]
    assert sorted(restart["objects"]) == sorted(f"logs/{stack.log_id}/{name}" for name in odd)
    verify = stack.verify()
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "VALID" in verify.stdout and "\x1b" not in verify.stdout


@pytest.mark.envoy
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
    # The old key vouches for what it signed, no more: what the new key signed is
    # reported (one line naming the key), and the log is the one the old key signed.
    old_only = run_cli("verify", stack.store_url, "--vkey", old.verifier().to_text())
    assert old_only.returncode == 0, old_only.stdout
    assert f"signed by key {new.name}+{new.key_id.hex()}" in old_only.stdout
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


# --- a writer under another key (the review's attack 9) ---------------------------------------

LOG_ID = "pod-a"


@pytest.fixture(params=["local", pytest.param("moto", marks=pytest.mark.s3)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    server: MotoServer = request.getfixturevalue("moto")
    return f"s3://{server.new_bucket()}/audit"


def _requests(count: int) -> list[dict[str, Any]]:
    return [{"kind": "request", "rid": f"r{i}"} for i in range(count)]


def _keys(store: ObjectStore) -> set[str]:
    return {o.key for o in store.list(layout.logs_prefix(store.prefix))}


def _label(signer: Signer) -> str:
    return f"{signer.name}+{signer.key_id.hex()}"


def test_writer_under_another_key_with_a_fresh_wal_is_refused(
    store_url: str, tmp_path: Path
) -> None:
    first, second = Signer.generate("audit-a"), Signer.generate("audit-b")
    store = open_store(store_url)
    write_log(store, first, tmp_path / "wal-a", LOG_ID, _requests(5), stop=True)
    before = _keys(store)
    with pytest.raises(ForkError, match="refusing to start a second history") as refused:
        write_log(store, second, tmp_path / "wal-b", LOG_ID, _requests(3))
    assert f"already signed by key {_label(first)}" in str(refused.value)
    assert f"not by this server's key {_label(second)}" in str(refused.value)
    assert _keys(store) == before  # nothing written, nothing recorded
    # Its own key with its own WAL continues the log as ever.
    write_log(store, first, tmp_path / "wal-a", LOG_ID, _requests(2), stop=True)
    reports, general = verify_store(store, first.verifier())
    assert all_ok(reports, general)


def test_second_history_under_another_key_never_changes_the_first_writers_verdict(
    store_url: str, tmp_path: Path
) -> None:
    first, second = Signer.generate("audit-a"), Signer.generate("audit-b")
    store = open_store(store_url)
    write_log(store, first, tmp_path / "wal-a", LOG_ID, _requests(4), _requests(3), stop=True)
    (honest,) = verify_store(store, first.verifier())[0]
    checkpoints = {k for k in _keys(store) if "/checkpoints/" in k}
    # The second writer starts over the log: the first one's objects are foreign
    # to it, it records them and writes its own history in a later epoch.
    before = _keys(store)
    unlisted: Any = Unlisted(store, checkpoints)
    write_log(unlisted, second, tmp_path / "wal-b", LOG_ID, _requests(6), stop=True)
    assert {k for k in _keys(store) - before if "/claims/" in k} >= {
        layout.claim_key(store.prefix, LOG_ID, 0, 2)
    }

    # The first key: the log it signed, VALID; the other key's objects are
    # reported as foreign, with one line naming that key.
    reports, general = verify_store(store, first.verifier())
    assert all_ok(reports, general), [str(f) for r in reports for f in r.findings]
    (report,) = reports
    assert (report.entries, report.keys) == (honest.entries, [_label(first)])
    assert report.latest is not None and honest.latest is not None
    assert report.latest.root_hash == honest.latest.root_hash
    summary = f"foreign objects signed by key {_label(second)}"
    assert len([f for f in report.findings if summary in f.message]) == 1
    assert all(f.severity == WARNING for f in report.findings)

    # Both keys: the first history is still the log (its entries all verify);
    # the second is one finding, an error with a checkpoint of each as evidence,
    # since two trees signed for one origin by keys trusted for it are a fork.
    reports, general = verify_store(store, Keyring.of(first.verifier(), second.verifier()))
    (report,) = reports
    assert report.entries == honest.entries and report.latest is not None
    assert report.latest.root_hash == honest.latest.root_hash
    errors = [f for f in report.findings if f.severity == ERROR]
    assert len(errors) == 1, [str(f) for f in errors]
    assert f"a second history signed by key {_label(second)}" in errors[0].message
    assert len(errors[0].evidence) == 2

    # The same through the real command line.
    vkey_a, vkey_b = first.verifier().to_text(), second.verifier().to_text()
    alone = run_cli("verify", store_url, "--vkey", vkey_a)
    assert alone.returncode == 0 and "VALID" in alone.stdout, alone.stdout
    both = run_cli("verify", store_url, "--vkey", vkey_a, "--vkey", vkey_b)
    assert both.returncode == 1
    assert [line for line in both.stdout.splitlines() if "error:" in line] == [
        line for line in both.stdout.splitlines() if "a second history" in line
    ]


def test_serve_under_another_key_refuses_to_start(tmp_path: Path, signer: Signer) -> None:
    store = tmp_path / "store"
    write_log(LocalStore(store), signer, tmp_path / "wal-a", LOG_ID, _requests(3), stop=True)
    other = tmp_path / "other.key"
    write_signer(other, Signer.generate("audit-b"))
    result = run_cli(
        "serve", "--store", str(store), "--key", str(other), "--log-id", LOG_ID,
        "--wal-dir", str(tmp_path / "fresh-wal"), "--listen", "127.0.0.1:0",
        "--metrics-listen", "off", "--health-listen", "off", "--allow-no-object-lock",
        "--allow-unauthenticated",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if "refusing to start" in x]
    assert f"already signed by key {_label(signer)}" in line and "--log-id" in line
    assert "Traceback" not in result.stderr
