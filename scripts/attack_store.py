"""What is published and what the auditor reads of it (docs/THREATS.md: Hiding or
changing what was published, The auditor's view, Secrets): plants in the live
store, tampering with a closed log, escapes on the auditor's terminal, secrets in
the WAL and the store.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attack_lab import (
    AUDITOR,
    HIDING,
    RESUME_S,
    SECRETS,
    SERVER_RSS_MB,
    VERIFY_RSS_MB,
    Findings,
    Published,
    Server,
    attack,
    exchange,
    honest_load,
    nothing_lost,
    peak_rss_mb,
    raw_printable,
    run_child,
)

from extproc.attributes import PEER_SAN
from extproc.core import layout
from extproc.store import open_store
from extproc.store.local import LocalStore
from tests import attacks as A
from tests.helpers import tree_bytes
from tests.messages import request_headers, response_headers
from tests.tampering import TAMPERING, checkpoint_sizes, forked, local_bucket, truncated

# --- Hiding or changing what was published -------------------------------------------------


def _published_size(server: Server) -> int:
    return int(server.metric("extproc_audit_published_entries"))


def _wait(condition: Callable[[], bool], within: float) -> float:
    """Seconds until `condition()` holds; raises TimeoutError after `within`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise TimeoutError(f"not within {within:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started


def _quiet(server: Server) -> int:
    """Wait until everything logged is published; the published size (the next claim's seq)."""
    _wait(lambda: _published_size(server) == server.metric("extproc_audit_log_entries"), 30)
    return _published_size(server)


@attack(
    "planted-claims", HIDING,
    "400 planted claims at the next position and names off the layout, while the writer "
    "publishes (review 4: publication stopped > 120 s, the log INVALID for good)",
    "test_hostile_store.py::test_planted_claims_cost_o1_each_and_never_stop_publication, "
    "test_writer_isolation.py::test_400_planted_claims_and_names_off_the_layout_do_not_stop_the"
    "_mesh", "mesh",
)  # fmt: skip
def planted_claims(server: Server, f: Findings) -> None:
    store = open_store(server.stack.store_url)
    position = _quiet(server)
    A.plant_claims(store, server.stack.log_id, position, A.PLANTED_CLAIMS)
    A.plant_off_layout(store, server.stack.log_id)
    honest = honest_load(server.stack.envoy_port, 50.0, 1.0)
    logged = server.metric("extproc_audit_log_entries")
    resumed = _wait(lambda: _published_size(server) >= logged, RESUME_S * 3)
    f.check(honest.failed == 0, f"{honest.failed} honest requests failed (503?)")
    f.within("publication resumed in", resumed, RESUME_S, "s")
    nothing_lost(f, server, honest)

    def check() -> None:
        records = [e for e in server.entries() if e.get("event") == "foreign"]
        counted = max((r.get("count", 0) for r in records), default=0)
        f.check(counted >= A.PLANTED_CLAIMS, f"the writer recorded {counted} foreign objects")
        f.note(f"{counted} foreign objects recorded in {len(records)} writer entries")

    f.afterwards(check)


@attack(
    "store-bomb", HIDING,
    "a 1 MB gzip bomb (1 GiB) unclaimed and at a claimed range, a FIFO, a symlink to "
    "/dev/zero, names not UTF-8, in the live server's local store (review 3)",
    "test_hostile_store.py::test_unclaimed_gzip_bomb_is_reported_and_never_read, "
    "test_fifo_and_symlinks_in_a_local_store_are_foreign_objects_detected, "
    "test_writer_restart_and_self_audit_never_read_a_planted_bomb; "
    "scripts/bench_hostile.py --store-bomb", "mesh",
)  # fmt: skip
def store_bomb(server: Server, f: Findings) -> None:
    root, log_id = Path(server.stack.store_url), server.stack.log_id
    store = LocalStore(root)
    _quiet(server)
    name = _first_bundle(store, log_id)
    bomb = A.gzip_bomb()
    unclaimed = layout.bundle_key("", log_id, name.first, name.last + 1000, gzip=True)
    store.put_once(unclaimed, bomb, None)
    store.put_once(layout.bundle_key("", log_id, name.first, name.last, gzip=True), bomb, None)
    planted = A.plant_non_files(root, root / "logs" / log_id, first=10**9)
    honest = honest_load(server.stack.envoy_port, 50.0, 1.0)
    f.check(honest.failed == 0, f"{honest.failed} honest requests failed after the plants")
    time.sleep(1.5)  # a self-audit (every second) runs over the planted store
    assert server.stack.server is not None
    f.within("server RSS peak", peak_rss_mb(server.stack.server.pid), SERVER_RSS_MB, "MB")
    nothing_lost(f, server, honest)
    f.afterwards(lambda: _audit_planted_store(server, f, planted))


def _first_bundle(store: LocalStore, log_id: str) -> Any:
    for info in store.list(layout.log_prefix("", log_id) + "entries/"):
        name = layout.parse_key("", info.key)
        if name is not None and name.bundle is not None:
            return name.bundle
    raise RuntimeError("no bundle published yet")


def _audit_planted_store(server: Server, f: Findings, planted: dict[str, str]) -> None:
    """After the stop: verify and search end within their budgets and name every
    plant; a restart (the whole log listed, a self-audit) stays within its own."""
    vkey = server.stack.vkey()
    verify = run_child("verify", server.stack.store_url, "--vkey", vkey)
    f.check(verify.status == 0, f"verify exited {verify.status}: {verify.stdout[-300:]}")
    f.within("verify RSS", verify.peak_rss_mb, VERIFY_RSS_MB, "MB")
    summarised = "more foreign objects, not listed one by one" in verify.stdout
    for key, what in planted.items():  # named, or counted past the first 100 listed
        line = next((x for x in verify.stdout.splitlines() if key in x), "")
        named = "warning" in line and what in line
        f.check(named or (summarised and not line), f"verify does not report {key} ({what})")
    f.note(f"verify ended in {verify.seconds:.1f} s (a FIFO read hangs)")
    search = run_child("search", server.stack.store_url, "--vkey", vkey, "--status", "5xx")
    f.check(search.status == 0, f"search exited {search.status}")
    f.within("search RSS", search.peak_rss_mb, VERIFY_RSS_MB, "MB")
    f.within("restart RSS", restart(server, f), SERVER_RSS_MB, "MB")


def restart(server: Server, f: Findings) -> float:
    """Start the stopped server again (it lists the whole log, self-audits on start)
    and stop it; its peak RSS."""
    server.stack.start_server()
    assert server.stack.server is not None
    time.sleep(1.5)  # its self-audit on start, then one more
    rss = peak_rss_mb(server.stack.server.pid)
    f.check(server.stack.stop_server() == 0, "the restarted server did not stop cleanly")
    return rss


# --- The auditor's view --------------------------------------------------------------------


@attack(
    "terminal-escapes", AUDITOR,
    "entries whose path, request id, method or principal rewrite the auditor's terminal, "
    "shown by `search --format table` and `verify`",
    "test_search.py::test_table_output_escapes[*], test_display.py", "mesh",
)  # fmt: skip
def terminal_escapes(server: Server, f: Findings) -> None:
    with server.channel() as channel:
        for name, (changed, _) in A.TERMINAL_ESCAPES.items():
            fields = {"method": "GET", "path": "/ok", "rid": f"escape-{name}"} | changed
            principal = fields.pop("principal", "")
            msg = request_headers(
                fields["path"],
                fields["rid"],
                fields["method"],
                **({PEER_SAN: principal} if principal else {}),
            )
            exchange(channel, [msg, response_headers()])
    f.afterwards(lambda: _escapes_shown(server, f))


def _escapes_shown(server: Server, f: Findings) -> None:
    vkey = server.stack.vkey()
    table = run_child("search", server.stack.store_url, "--vkey", vkey, "--format", "table")
    verify = run_child("verify", server.stack.store_url, "--vkey", vkey)
    for command, out in (("search", table), ("verify", verify)):
        bad = raw_printable(out.stdout + out.stderr)
        f.check(not bad, f"{command} printed {len(bad)} raw control characters: {bad[:5]}")
    missing = [n for n, (_, shown) in A.TERMINAL_ESCAPES.items() if shown not in table.stdout]
    f.check(not missing, f"not shown escaped: {missing}")
    f.note(
        f"{len(A.TERMINAL_ESCAPES) - len(missing)} of {len(A.TERMINAL_ESCAPES)} shown "
        "escaped; raw control characters 0"
    )


@attack(
    "object-names-in-server-log", AUDITOR,
    "object names with ESC, CR, a newline and a bidi override (and not UTF-8) planted in the "
    "store: the server's log, SELF-AUDIT lines included, shows them escaped",
    "test_selfaudit.py::test_self_audit_lines_escape_control_characters_from_object_names",
    "mesh",
)  # fmt: skip
def object_names_in_server_log(server: Server, f: Findings) -> None:
    store = open_store(server.stack.store_url)
    A.plant_off_layout(store, server.stack.log_id, under="names/")

    def check() -> None:
        restart(server, f)  # the start lists the whole log and records names off the layout
        log = server.log_text()
        bad = raw_printable(log)
        f.check(not bad, f"{len(bad)} raw control characters in the server log: {bad[:5]}")
        named = [x for x in log.splitlines() if "\\x1b[2J" in x]
        f.check(bool(named), "no server log line names a planted object (nothing was tested)")
        f.note(f"{len(named)} log lines name planted objects, escaped; raw control characters 0")

    f.afterwards(check)


# --- Secrets -------------------------------------------------------------------------------


@attack(
    "secrets", SECRETS,
    f"the review's kinds of secrets ({len(A.SECRET_ROWS)} rows) through Envoy, both captures, "
    "under the default policy",
    "test_secrets_e2e.py, test_redact.py", "mesh",
)  # fmt: skip
def secrets(server: Server, f: Findings) -> None:
    statuses = {n: A.send_secret(server.stack.envoy_port, r) for n, r in A.SECRET_ROWS.items()}
    f.check(statuses.pop(A.ENVOY_REJECTS) in (400, 503), "Envoy took the fragment")
    f.check(set(statuses.values()) == {200}, f"statuses {set(statuses.values())}")
    _quiet(server)
    f.afterwards(lambda: _secrets_absent(server, f))


def _secrets_absent(server: Server, f: Findings) -> None:
    wal = tree_bytes(server.stack.workdir / "wal")
    published = tree_bytes(Path(server.stack.store_url))
    leaked = {}
    for name, row in A.SECRET_ROWS.items():
        problems = A.secret_problems(row, server.hash_key, wal, published)
        if problems:
            leaked[name] = problems
    f.check(not leaked, f"{len(leaked)} rows: {dict(list(leaked.items())[:3])}")
    f.note(
        f"{len(leaked)} of {len(A.SECRET_ROWS)} rows in clear (or not hashed) in {len(wal):,} "
        f"WAL bytes and {len(published):,} store bytes"
    )


# --- Hiding: tampering with the bucket -------------------------------------------------------


@attack(
    "tamper-published", HIDING,
    "overwrite, delete, swap, re-sign or insert published objects, then `verify`",
    "test_tamper.py::test_tampering_detected_local[*], test_tampering_detected_s3[*]",
    "pristine",
)  # fmt: skip
def tamper_published(w: Published, f: Findings) -> None:
    p = w.p
    rows = {k: TAMPERING[k] for k in QUICK_TAMPERING} if w.lab.quick else TAMPERING
    for name, tamper in rows.items():
        root = w.dir("tamper") / name
        shutil.copytree(p.root, root)
        expected = tamper.run(local_bucket(root), p)
        result = run_child("verify", str(root), "--vkey", p.vkey)
        want = 0 if tamper.warning else 1
        f.check(
            result.status == want and expected in result.stdout,
            f"{name}: verify exited {result.status} without {expected!r}",
        )
    f.note(f"{len(rows)} of {len(rows)} detected by verify")


QUICK_TAMPERING = ("bundle_byte_changed", "bundle_deleted", "checkpoint_signed_by_another_key")


@attack(
    "rollback-fork", HIDING,
    "roll a verified log back, or fork it with the leaked key, against `verify --state`",
    "test_tamper.py::test_checkpoint_rollback_against_state_detected, "
    "test_fork_against_state_detected", "pristine",
)  # fmt: skip
def rollback_fork(w: Published, f: Findings) -> None:
    p, work = w.p, w.dir("state")
    state = work / "state.json"
    first = run_child("verify", str(p.root), "--vkey", p.vkey, "--state", str(state))
    f.check(first.status == 0, f"the pristine log did not verify: {first.stdout[-200:]}")
    older = truncated(p, work / "older", checkpoint_sizes(p)[-2])
    rolled = run_child("verify", str(older), "--vkey", p.vkey, "--state", str(state))
    f.check(rolled.status == 1 and "rollback:" in rolled.stdout, "the rollback was not reported")
    fork_state = work / "fork-state.json"
    fork = forked(p, work / "fork")
    run_child("verify", str(fork), "--vkey", p.vkey, "--state", str(fork_state))
    found = run_child("verify", str(p.root), "--vkey", p.vkey, "--state", str(fork_state))
    f.check(found.status == 1 and "fork:" in found.stdout, "the fork was not reported")
    f.note("rollback: and fork: reported, exit 1, both signed checkpoints as evidence")
