"""verify --tiles (audit/tilecheck.py): a log checked from its C2SP tlog-tiles.

Logs are written by the real writer (tiles on); each attack changes one thing
in the store the way an attacker with write access would, and must be found.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from extproc.audit.reader import LogObjects
from extproc.audit.tilecheck import verify_tiles
from extproc.audit.verify import log_state_after, verify_store
from extproc.core import layout
from extproc.core.checkpoint import Checkpoint, make_extensions, sign_checkpoint
from extproc.core.findings import ERROR, WARNING, Finding
from extproc.core.keyring import Keyring
from extproc.core.layout import ENTRIES_LEVEL, TileName
from extproc.core.merkle import leaf_hash
from extproc.core.note import Signer
from extproc.core.tiles import TileBuilder, entry_bundle_bytes, entry_bundle_entries
from extproc.store.base import DEFAULT_READ_LIMIT
from extproc.store.local import LocalStore
from extproc.store.memory import MemoryStore
from tests.helpers import ORIGIN_PREFIX, write_log

LOG = "web"


def _log(tmp_path: Path, signer: Signer) -> MemoryStore:
    """601 entries (2 full entry bundles and a partial one), five checkpoints."""
    store = MemoryStore("audit", versioned=True)
    batches = [[{"kind": "request", "rid": f"r{i}-{j}"} for j in range(150)] for i in range(4)]
    write_log(store, signer, tmp_path / "wal", LOG, *batches, tiles=True, stop=True)
    return store


def _key(store: MemoryStore, tile: TileName) -> str:
    return layout.tile_key(store.prefix, LOG, tile)


def _flip(store: MemoryStore, key: str, at: int = 40) -> None:
    data = bytearray(store.objects[key])
    data[at % len(data)] ^= 1
    store.overwrite(key, bytes(data))


def _rewrite_bundle(
    store: MemoryStore, index: int, change: Callable[[list[bytes]], list[bytes]]
) -> None:
    key = _key(store, TileName(ENTRIES_LEVEL, index))
    store.overwrite(key, entry_bundle_bytes(change(entry_bundle_entries(store.objects[key]))))


def _rollback(store: MemoryStore, signer: Signer) -> None:
    """A later `checkpoint` version at a smaller size (signed by the log's key)."""
    key = layout.checkpoint_key(store.prefix, LOG, 150)
    store.overwrite(layout.latest_checkpoint_key(store.prefix, LOG), store.objects[key])


def _forged_checkpoint(store: MemoryStore, signer: Signer) -> None:
    other = Signer.generate("test-audit")
    latest = layout.latest_checkpoint_key(store.prefix, LOG)
    real = Checkpoint.from_text(store.objects[latest].split(b"\n\n")[0].decode() + "\n")
    forged = Checkpoint(real.origin, real.size, real.root_hash, make_extensions(1, "ab"))
    store.overwrite(latest, sign_checkpoint(forged, other))


ATTACKS: dict[str, tuple[Callable[[MemoryStore, Signer], None], str]] = {
    "entry-changed": (
        lambda s, _: _flip(s, _key(s, TileName(ENTRIES_LEVEL, 1)), 300),
        "not the leaf hashes of the entries",
    ),
    "entry-removed": (
        lambda s, _: _rewrite_bundle(s, 0, lambda e: e[:-1]),
        "holds 255 entries, not 256",
    ),
    "entries-reordered": (
        lambda s, _: _rewrite_bundle(s, 1, lambda e: [e[1], e[0], *e[2:]]),
        "prev hash mismatch",
    ),
    "level-0-tile-changed": (
        lambda s, _: _flip(s, _key(s, TileName(0, 0))),
        "not the leaf hashes",
    ),
    "partial-tile-changed": (
        lambda s, _: _flip(s, _key(s, TileName(1, 0, 2))),
        "not the roots of the tiles below it",
    ),
    "partial-entry-bundle-changed": (
        lambda s, _: _flip(s, _key(s, TileName(ENTRIES_LEVEL, 2, 89)), 500),
        "not the leaf hashes",
    ),
    "tile-deleted": (
        lambda s, _: s.delete(_key(s, TileName(0, 1))),
        "missing",
    ),
    "checkpoint-rolled-back": (_rollback, "rollback"),
    "checkpoint-forged": (_forged_checkpoint, "does not verify"),
}


def test_a_published_log_verifies_from_its_tiles(tmp_path: Path, signer: Signer) -> None:
    store = _log(tmp_path, signer)
    report = verify_tiles(store, LOG, Keyring.of(signer.verifier()), ORIGIN_PREFIX)
    assert report.ok, [str(f) for f in report.findings]
    assert (report.entries, report.bundles) == (601, 3)
    assert report.checkpoints == 5  # every version of `checkpoint`, each checked


@pytest.mark.parametrize(("attack", "finding"), ATTACKS.values(), ids=ATTACKS)
def test_tampered_tiles_detected(
    tmp_path: Path,
    signer: Signer,
    attack: Callable[[MemoryStore, Signer], None],
    finding: str,
) -> None:
    store = _log(tmp_path, signer)
    attack(store, signer)
    report = verify_tiles(store, LOG, Keyring.of(signer.verifier()), ORIGIN_PREFIX)
    messages = [str(f) for f in report.findings]
    assert not report.ok
    assert any(finding in m for m in messages), messages


def test_a_log_without_tiles_is_a_finding(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore("audit")
    write_log(store, signer, tmp_path / "wal", LOG, [{"kind": "request"}], tiles=False)
    report = verify_tiles(store, LOG, Keyring.of(signer.verifier()))
    assert [f.message for f in report.findings] == [
        "no checkpoint: not published in tlog-tiles layout (serve --no-tiles, or not yet)"
    ]


@pytest.mark.parametrize("bad", [None, 20000])
def test_parallel_check_over_tiles_agrees(tmp_path: Path, signer: Signer, bad: int | None) -> None:
    """Two worker processes over 160 entry bundles: the same verdict as one."""
    store = LocalStore(tmp_path / "store")
    size = 160 * 256 + 17
    builder, prev = TileBuilder(), ""
    pairs = []
    for seq in range(size):
        line = b'{"kind":"request","prev":"%s","seq":%d,"v":1}' % (prev.encode(), seq)
        leaf = leaf_hash(line)
        pairs.append((line, leaf))
        prev = leaf.hex()
    tiles = builder.extend(pairs) + builder.partials()
    cp = Checkpoint(f"{ORIGIN_PREFIX}/{LOG}", size, builder.compact_range().root(),
                    make_extensions(1, "ab"))  # fmt: skip
    for tile, data in tiles:
        if bad is not None and tile == TileName(ENTRIES_LEVEL, bad // 256):
            data = data.replace(b'"seq":%d' % bad, b'"seq":%d' % (bad + 1))
        store.put_once(layout.tile_key("", LOG, tile), data, None)
    store.put_once(layout.latest_checkpoint_key("", LOG), sign_checkpoint(cp, signer), None)
    keyring = Keyring.of(signer.verifier())
    one = verify_tiles(store, LOG, keyring, processes=1)
    two = verify_tiles(store, LOG, keyring, processes=2)
    assert [str(f) for f in one.findings] == [str(f) for f in two.findings]
    assert one.ok is (bad is None)
    if bad is not None:
        assert any(f"entry {bad}: seq field says {bad + 1}" in str(f) for f in two.findings)


class ReadingStore(MemoryStore):
    """The store, with every key read."""

    def __init__(self) -> None:
        super().__init__("audit", versioned=True)
        self.read: list[str] = []

    def get(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        self.read.append(key)
        return super().get(key, limit)


def _grow(tmp_path: Path, signer: Signer, store: MemoryStore, rounds: int) -> None:
    batches = [[{"kind": "request", "rid": f"s{i}-{j}"} for j in range(150)] for i in range(rounds)]
    write_log(store, signer, tmp_path / "wal", LOG, *batches, tiles=True, stop=True)


def test_incremental_verify_reads_only_tiles_past_the_verified_size(
    tmp_path: Path, signer: Signer
) -> None:
    store = ReadingStore()
    _grow(tmp_path, signer, store, 4)  # 601 entries
    keyring = Keyring.of(signer.verifier())
    first = verify_tiles(store, LOG, keyring)
    prior = log_state_after(first, LogObjects(), 0)
    assert prior is not None and prior.size == 601
    _grow(tmp_path, signer, store, 6)  # 1502 entries
    store.read.clear()
    report = verify_tiles(store, LOG, keyring, prior=prior)
    assert report.ok, [str(f) for f in report.findings]
    assert (report.entries, report.resumed_from, report.rehashed) == (1502, 601, 901)
    read = {k.removeprefix(f"audit/logs/{LOG}/") for k in store.read}
    assert not read & {"tile/entries/000", "tile/entries/001", "tile/0/000", "tile/0/001"}
    assert "tile/entries/002" in read and "tile/0/002.p/89" in read  # the verified size's
    full = verify_tiles(store, LOG, keyring)
    assert report.frontier is not None and full.frontier is not None
    assert report.frontier[0].hashes == full.frontier[0].hashes


@pytest.mark.parametrize(
    ("target", "finding"),
    [
        ("tile/0/002.p/89", "not the verified tree"),
        ("tile/entries/002.p/89", "not the entries verified before"),
        ("tile/0/003", "not the leaf hashes"),
    ],
)
def test_incremental_verify_detects_tampering_past_or_at_the_verified_size(
    tmp_path: Path, signer: Signer, target: str, finding: str
) -> None:
    store = ReadingStore()
    _grow(tmp_path, signer, store, 4)
    keyring = Keyring.of(signer.verifier())
    prior = log_state_after(verify_tiles(store, LOG, keyring), LogObjects(), 0)
    _grow(tmp_path, signer, store, 6)
    _flip(store, f"audit/logs/{LOG}/{target}", 70)
    report = verify_tiles(store, LOG, keyring, prior=prior)
    messages = [str(f) for f in report.findings]
    assert not report.ok and any(finding in m for m in messages), messages


def test_incremental_verify_detects_a_rollback(tmp_path: Path, signer: Signer) -> None:
    store = ReadingStore()
    _grow(tmp_path, signer, store, 4)
    keyring = Keyring.of(signer.verifier())
    prior = log_state_after(verify_tiles(store, LOG, keyring), LogObjects(), 0)
    assert prior is not None
    bigger = dataclasses.replace(prior, size=prior.size + 1)
    report = verify_tiles(store, LOG, keyring, prior=bigger)
    assert any("rollback" in str(f) for f in report.findings)


def test_state_of_verify_tiles_resumes_both_modes(
    tmp_path: Path, signer: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    """One state file: `verify --tiles` resumes from it; plain `verify` given a
    record the tiles run wrote (no fingerprints of our objects) re-reads the
    log, held to the recorded tree, instead of calling every object inserted."""
    from extproc.cli import main

    store = LocalStore(tmp_path / "store")
    batches = [[{"kind": "request", "rid": f"r{i}-{j}"} for j in range(150)] for i in range(2)]
    write_log(store, signer, tmp_path / "wal", LOG, *batches, tiles=True, stop=True)
    vkey, state = signer.verifier().to_text(), str(tmp_path / "state.json")
    common = ["verify", str(tmp_path / "store"), "--vkey", vkey, "--state", state]
    assert main([*common, "--tiles"]) == 0
    assert main([*common, "--tiles"]) == 0
    assert "(0 new since the verified size 301)" in capsys.readouterr().out
    assert main(common) == 0
    assert main(common) == 0
    assert main([*common, "--tiles"]) == 0


def _plain_verify(store: MemoryStore, signer: Signer) -> list[Finding]:
    reports, general = verify_store(store, signer.verifier(), ORIGIN_PREFIX)
    return [f for r in reports for f in r.findings] + list(general)


def test_plain_verify_checks_the_latest_checkpoint_object(tmp_path: Path, signer: Signer) -> None:
    store = _log(tmp_path, signer)
    latest = layout.latest_checkpoint_key(store.prefix, LOG)
    assert not [f for f in _plain_verify(store, signer) if f.key == latest]
    _forged_checkpoint(store, signer)  # standard clients would refuse it: a warning
    found = [f for f in _plain_verify(store, signer) if f.key == latest]
    assert [(f.severity, "not a checkpoint of a trusted key" in f.message) for f in found] == [
        (WARNING, True)
    ]
    # A trusted signature over another root at a size the log signed: an error.
    real = Checkpoint.from_text(store.objects[latest].split(b"\n\n")[0].decode() + "\n")
    forked = Checkpoint(real.origin, 450, b"\x07" * 32, make_extensions(1, "ab"))
    store.overwrite(latest, sign_checkpoint(forked, signer))
    found = [f for f in _plain_verify(store, signer) if f.key == latest]
    assert [(f.severity, f.message) for f in found] == [
        (ERROR, "another root than the checkpoint of size 450")
    ]
