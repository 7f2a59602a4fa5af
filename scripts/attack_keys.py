"""Keys, and mistakes that look like success (docs/THREATS.md): a retired key, a
second writer under another key, a readable key file, mistyped store URLs, a
malformed origin prefix.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from typing import Any

from attack_lab import KEYS, MISTAKES, Findings, Lab, Published, attack, run_child

from extproc.core import layout
from extproc.core.note import Signer
from extproc.keys import write_signer
from extproc.store.local import LocalStore
from tests import attacks as A
from tests.helpers import write_log

# --- Keys ----------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


@attack(
    "retired-key-backdated", KEYS,
    "a retired key signs a made-up entry under a checkpoint whose time line is backdated "
    "(review 8), handed to `check-proof --keyring`",
    "test_retired_keys.py::test_retired_key_checkpoint_needs_evidence_from_outside_the_signer"
    "[*], test_made_up_entry_under_retired_key_refused_even_beside_a_trusted_state", "pristine",
)  # fmt: skip
def retired_key_backdated(w: Published, f: Findings) -> None:
    p, work = w.p, w.dir("retired")
    retired = datetime.now(UTC) - timedelta(days=1)
    origin = layout.origin_for("extproc-audit", p.log_id)
    backdated_ms = int((retired - timedelta(days=1)).timestamp() * 1000)
    proof = work / "made-up.tlog-proof"
    proof.write_text(A.backdated_proof(p.signer, origin, backdated_ms).to_text())
    successor = Signer.generate("e2e-audit-2027").verifier().to_text()
    ring = work / "audit.keyring"
    ring.write_text(f"{p.vkey} until={_iso(retired)}\n{successor} from={_iso(retired)}\n")
    checked = run_child("check-proof", str(proof), "--keyring", str(ring))
    f.check(
        checked.status == 1 and "retired" in checked.stdout + checked.stderr,
        f"check-proof exited {checked.status}: {(checked.stdout + checked.stderr)[-200:]}",
    )
    # The same forgery, were the key not retired: accepted (only the end date stops it).
    open_ring = work / "open.keyring"
    open_ring.write_text(f"{p.vkey}\n")
    control = run_child("check-proof", str(proof), "--keyring", str(open_ring))
    f.check(control.status == 0, f"the forgery is not well-formed: {control.stdout[-200:]}")
    f.note("exit 1 (retired, no outside evidence); the same file passes without the end date")


@attack(
    "second-writer-other-key", KEYS,
    "a serve under another key with the log's id and a fresh WAL; then a second history "
    "written anyway, and `verify` with the first key (review 9)",
    "test_writer_isolation.py::test_writer_under_another_key_with_a_fresh_wal_is_refused[*], "
    "test_second_history_under_another_key_never_changes_the_first_writers_verdict[*], "
    "test_serve_under_another_key_refuses_to_start", "pristine",
)  # fmt: skip
def second_writer_other_key(w: Published, f: Findings) -> None:
    p, work = w.p, w.dir("second-writer")
    root = work / "store"
    shutil.copytree(p.root, root)
    second = Signer.generate("audit-b")
    write_signer(work / "other.key", second)
    serve = run_child(
        "serve", "--store", str(root), "--key", str(work / "other.key"), "--log-id", p.log_id,
        "--wal-dir", str(work / "fresh-wal"), "--listen", "127.0.0.1:0", "--metrics-listen",
        "off", "--health-listen", "off", "--allow-no-object-lock", "--allow-unauthenticated",
        timeout=30,
    )  # fmt: skip
    f.check(
        serve.status == 2
        and "refusing to start" in serve.stderr
        and "Traceback" not in serve.stderr,
        f"serve exited {serve.status}: {serve.stderr[-200:]}",
    )
    store = LocalStore(root)
    checkpoints = {o.key for o in store.list("logs/") if "/checkpoints/" in o.key}
    unlisted: Any = A.Unlisted(store, checkpoints)
    write_log(
        unlisted,
        second,
        work / "wal-b",
        p.log_id,
        [{"kind": "request", "rid": f"second-{i}"} for i in range(6)],
        stop=True,
    )
    alone = run_child("verify", str(root), "--vkey", p.vkey)
    f.check(
        alone.status == 0 and "VALID" in alone.stdout,
        f"verify with the first key exited {alone.status}",
    )
    label = f"foreign objects signed by key {second.name}+{second.key_id.hex()}"
    f.check(label in alone.stdout, "the other key's objects are not reported")
    both = run_child("verify", str(root), "--vkey", p.vkey, "--vkey", second.verifier().to_text())
    f.check(both.status == 1 and "a second history" in both.stdout, "both keys: no fork reported")
    f.note("serve exit 2; first key still VALID (other key's objects: a warning); both keys: fork")


@attack(
    "world-readable-key", KEYS,
    "a signing key file others can read (it only got a warning)",
    "test_keys.py::test_world_readable_key_stops_serve_with_one_line", "cli",
)  # fmt: skip
def world_readable_key(lab: Lab, f: Findings) -> None:
    work = lab.dir("world-readable")
    key = work / "signing.key"
    write_signer(key, Signer.generate("open"))
    key.chmod(0o644)
    serve = run_child(
        "serve",
        "--store",
        str(work / "store"),
        "--key",
        str(key),
        "--allow-unauthenticated",
        timeout=30,
    )
    f.check(
        serve.status == 2 and f"chmod 600 {key}" in serve.stderr and serve.stderr.count("\n") == 1,
        f"serve exited {serve.status}: {serve.stderr[-200:]}",
    )
    f.note("exit 2, one line naming chmod 600")


# --- Mistakes that look like success -------------------------------------------------------


@attack(
    "mistyped-store-url", MISTAKES,
    "`serve --store s3:/bucket/mesh` (review 9: published to ./s3:/bucket/mesh, no Object Lock)",
    "test_store_urls.py::test_mistyped_store_url_is_a_usage_error_in_every_command[*]", "cli",
)  # fmt: skip
def mistyped_store_url(lab: Lab, f: Findings) -> None:
    urls = A.MISTYPED_STORE_URLS if not lab.quick else {"one slash": "s3:/bucket/mesh"}
    for i, (name, url) in enumerate(urls.items()):
        cwd = lab.dir(f"typo-{i}")
        serve = run_child(
            "serve",
            "--store",
            url,
            "--key",
            "k",
            "--wal-dir",
            "w",
            "--allow-unauthenticated",
            timeout=30,
            cwd=cwd,
        )
        f.check(
            serve.status == 2 and serve.stderr.count("\n") == 1,
            f"{name}: serve exited {serve.status}: {serve.stderr[-200:]!r}",
        )
        f.check(not list(cwd.iterdir()), f"{name}: serve created {list(cwd.iterdir())}")
    f.note(f"{len(urls)} of {len(urls)}: exit 2, one line, nothing created")


@attack(
    "origin-prefix-newline", MISTAKES,
    "`--origin-prefix` with a newline (the server signed malformed checkpoints)",
    "test_checkpoint.py::test_malformed_origin_prefix_is_a_usage_error[*]", "cli",
)  # fmt: skip
def origin_prefix_newline(lab: Lab, f: Findings) -> None:
    work = lab.dir("origin")
    write_signer(work / "signing.key", Signer.generate("origin"))
    serve = run_child(
        "serve", "--store", str(work / "store"), "--key", str(work / "signing.key"),
        "--wal-dir", str(work / "wal"), "--origin-prefix", A.NEWLINE_ORIGIN_PREFIX,
        "--allow-unauthenticated", "--listen", "127.0.0.1:0", timeout=30,
    )  # fmt: skip
    f.check(
        serve.status == 2 and "origin prefix" in serve.stderr,
        f"serve exited {serve.status}: {serve.stderr[-200:]!r}",
    )
    f.check(not (work / "store").exists(), "a store was created")
    f.note("exit 2 (usage error), nothing signed")
