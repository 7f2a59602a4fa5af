"""The tlog-tiles `checkpoint` carries the witnesses' cosignatures (issue 19 item 4).

Standard witness-aware C2SP clients read `checkpoint` and look for the
cosignature lines there. Once a witness round returns, the writer puts the
cosigned note at `checkpoint`, but only if that note is still the latest
there: every version of `checkpoint` is kept (Object Lock), and a smaller
size after a larger one is a rollback to `verify --tiles`. So cosignatures
that arrive after a newer checkpoint was written are dropped, never written;
the same size twice (signed, then cosigned) with the same root verifies, and
another root at that size is a fork.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from extproc import processes
from extproc.audit.tilecheck import verify_tiles
from extproc.core import layout
from extproc.core.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from extproc.core.cosignature import WitnessPolicy
from extproc.core.keyring import Keyring
from extproc.core.merkle import CompactRange
from extproc.core.note import Signer, parse_note
from extproc.errors import AuditError
from extproc.keys import load_signer
from extproc.log.appender import AuditLog
from extproc.log.publisher import Publisher, PublisherConfig
from extproc.log.wal import WAL
from extproc.store import open_store
from extproc.store.memory import MemoryStore
from extproc.witness.client import StoreProofs, WitnessClient
from tests.conftest import run_cli
from tests.helpers import ORIGIN_PREFIX
from tests.integration import test_tlog_interop as interop
from tests.integration.test_cosignature_go import cosigcheck
from tests.witnesses import fixed_cosigner, running_witness, witnessed

LOG = "web"
ORIGIN = layout.origin_for(ORIGIN_PREFIX, LOG)
W1 = fixed_cosigner("w1.example", 91)
POLICY = WitnessPolicy.of([W1.witness_key()])
tlogclient = interop.tlogclient  # the Go client, built once per session


def _versions(store: MemoryStore) -> list[bytes]:
    key = layout.latest_checkpoint_key(store.prefix, LOG)
    return [store.get_version(key, v.version_id) for v in store.versions(key) if v.key == key]


def _sizes(notes: list[bytes], signer: Signer) -> list[int]:
    return [open_checkpoint(n, signer.verifier()).size for n in notes]


def test_late_cosignatures_of_an_older_checkpoint_are_dropped_not_written(
    tmp_path: Path, signer: Signer
) -> None:
    """A newer checkpoint is out before the witness answers for the older one:
    the older's cosignatures go to cosigned/<size> only, `checkpoint` never goes
    back; the newer's cosignatures are put there, and the history verifies."""
    store = MemoryStore("audit", versioned=True)
    published: list[tuple[Checkpoint, bytes]] = []

    async def scenario(witness_url: str) -> None:
        wal = WAL(tmp_path / "wal")
        audit_log = AuditLog(wal, wal.recover())
        client = WitnessClient(
            POLICY,
            [witness_url],
            store,
            LOG,
            StoreProofs(store, LOG, Keyring.of(signer.verifier())),
            timeout=5,
        )

        def on_checkpoint(
            cp: Checkpoint, note: bytes, previous: CompactRange, leaves: list[bytes]
        ) -> None:
            client.submit(cp, note, previous, leaves)  # its memory: proofs between the two
            published.append((cp, note))

        config = PublisherConfig(LOG, ORIGIN, max_age=0.0, tiles=True)
        publisher = Publisher(
            audit_log, wal, store, signer, config, writer_id="abcd", on_checkpoint=on_checkpoint
        )
        client.on_cosigned = publisher.tiles.publish_cosigned
        await publisher.reconcile()
        for batch in range(2):
            last = None
            for i in range(5):
                last = audit_log.append_nowait({"kind": "request", "rid": f"r{batch}-{i}"})
            assert last is not None
            await audit_log.wait_durable(last)
            await publisher.publish()
        (old, old_note), (new, new_note) = published[-2:]
        # The witness cosigns the older checkpoint only now: dropped at `checkpoint`.
        assert await client.cosign(old, old_note)
        assert _versions(store)[-1] == new_note
        assert await client.cosign(new, new_note)
        audit_log.close()

    with running_witness(tmp_path / "w1", W1, witnessed(ORIGIN, signer=signer)) as witness:
        asyncio.run(asyncio.wait_for(scenario(witness.url), 30))

    (old, _), (new, new_note) = published[-2:]
    versions = _versions(store)
    sizes = _sizes(versions, signer)
    assert sizes == sorted(sizes) and sizes[-2:] == [new.size, new.size], sizes
    assert old.size in sizes and versions.count(new_note) == 1
    latest = versions[-1]
    assert latest.startswith(new_note) and latest != new_note
    _, cosignatures = POLICY.check(latest)  # a valid cosignature by w1
    assert [c.witness.name for c in cosignatures] == ["w1.example"]
    assert open_checkpoint(latest, signer.verifier()) == new  # still the log's signed note
    for version, size in zip(versions, sizes, strict=True):  # the older: never cosigned here
        assert size != old.size or len(parse_note(version)[1]) == 1
    keyring = Keyring.of(signer.verifier())
    report = verify_tiles(store, LOG, keyring, ORIGIN_PREFIX)
    assert report.ok and not report.findings, [str(f) for f in report.findings]
    assert report.checkpoints == len(versions)

    # Another root at the same size, signed by the log's key, in the history: a fork.
    forked = Checkpoint(ORIGIN, new.size, bytes(32), new.extensions)
    key = layout.latest_checkpoint_key(store.prefix, LOG)
    store.overwrite(key, sign_checkpoint(forked, signer))
    store.overwrite(key, latest)  # and back: the current version is the honest one
    report = verify_tiles(store, LOG, keyring, ORIGIN_PREFIX)
    messages = [str(f) for f in report.findings]
    assert len(messages) == 1 and f"root of size {new.size} is not this tree's" in messages[0]


def _serve_witnessed(make_stack: Any, tmp_path: Path) -> tuple[Any, Signer, bytes]:
    """serve --witness with a live witness until `checkpoint` is cosigned, then
    stopped: (the stack, the log's signer, the last `checkpoint`)."""
    stack = make_stack(log_id=LOG)
    signer = load_signer(stack.key_path)
    origin = layout.origin_for("extproc-audit", LOG)
    store = open_store(stack.store_url)
    key = layout.latest_checkpoint_key(store.prefix, LOG)

    def cosigned() -> bool:
        try:
            POLICY.check(store.get(key))
        except AuditError:
            return False
        return True

    with running_witness(tmp_path / "w1", W1, witnessed(origin, signer=signer)) as live:
        stack.extra_args = ["--heartbeat-interval", "0.3", "--self-audit-interval", "0",
                            "--witness", f"{W1.witness_key().to_text()}+{live.url}"]  # fmt: skip
        stack.start_server()
        processes.wait_until(cosigned, "a cosigned `checkpoint`", stack.server)
        assert stack.stop_server() == 0
        # The final checkpoint too: the drain's last witness round cosigns it.
        assert cosigned()
    return stack, signer, store.get(key)


def test_serve_puts_the_cosigned_note_at_the_tiles_checkpoint(
    make_stack: Any, tmp_path: Path
) -> None:
    """serve --witness: the latest `checkpoint` is the checkpoint of record with
    the live witness's cosignature appended; verify --tiles stays valid."""
    stack, signer, latest = _serve_witnessed(make_stack, tmp_path)
    store = open_store(stack.store_url)
    cp = open_checkpoint(latest, signer.verifier())
    assert cp.origin == layout.origin_for("extproc-audit", LOG)
    final = store.get(layout.checkpoint_key(store.prefix, LOG, cp.size))  # the one of record
    assert latest.startswith(final) and latest != final
    result = run_cli("verify", stack.store_url, "--vkey", stack.vkey(), "--tiles")
    assert result.returncode == 0, result.stdout + result.stderr


def test_go_clients_read_the_cosigned_checkpoint(
    tlogclient: Path, make_stack: Any, tmp_path: Path
) -> None:
    """Clients not written here: x/mod's tlog client verifies the log from its
    tiles under the cosigned `checkpoint` (the cosignature skipped as an unknown
    key's), and x/mod's note with a cosignature/v1 verifier finds w1's."""
    stack, signer, latest = _serve_witnessed(make_stack, tmp_path)
    size = open_checkpoint(latest, signer.verifier()).size
    log_dir = str(Path(stack.store_url) / "logs" / LOG)
    vkey = signer.verifier().to_text()
    run = interop._client(tlogclient, log_dir, vkey, layout.origin_for("extproc-audit", LOG))
    assert run.returncode == 0 and f" size={size} entries={size} " in run.stdout, run.stderr
    checked = cosigcheck(tmp_path, latest, vkey, W1.witness_key().to_text())
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines()[1:] == [f"w1.example {POLICY.check(latest)[1][0].timestamp}"]
