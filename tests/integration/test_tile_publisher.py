"""The writer publishes every log in C2SP tlog-tiles layout beside ours
(extproc/log/tilewriter.py): each tile once, exactly the tiles of the log's
tree at each checkpoint, `checkpoint` rewritten as the log grows, resumed
after a restart from its own partial tiles, built once for a log from before
tiles, and a planted tile recorded, never stopping the log.

The expected tiles come from the log's entries through core.tiles.TileBuilder
(checked against RFC 9162 in test_tiles.py); the Go client in
tests/integration/test_tlog_interop.py reads the same layout independently.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from extproc.audit.tilecheck import verify_tiles
from extproc.audit.verify import verify_store
from extproc.core import layout
from extproc.core.fields import EVENT, EVENT_FOREIGN, OBJECT
from extproc.core.findings import all_ok
from extproc.core.keyring import Keyring
from extproc.core.merkle import leaf_hash
from extproc.core.note import Signer
from extproc.core.tiles import TileBuilder, new_tiles, tiles_at
from extproc.log.tilewriter import TILE_PUTS_IN_FLIGHT
from extproc.store.base import Retention, RetentionPolicy
from extproc.store.memory import MemoryStore
from tests.helpers import ORIGIN_PREFIX, read_entries, read_lines, write_log

LOG = "web"
LOCK = RetentionPolicy("COMPLIANCE", 7)


def _batches(count: int, size: int, tag: str = "r") -> list[list[dict[str, Any]]]:
    return [
        [{"kind": "request", "rid": f"{tag}{i}-{j}"} for j in range(size)] for i in range(count)
    ]


def _write(
    store: MemoryStore, signer: Signer, wal: Path, *batches: list[dict[str, Any]], **config: Any
) -> None:
    """The real writer, tiles on, every object locked."""
    config.setdefault("tiles", True)
    write_log(store, signer, wal, LOG, *batches, retention=LOCK, **config)


def _checkpoint_sizes(store: MemoryStore) -> list[int]:
    folder = layout.checkpoints_prefix(store.prefix, LOG)
    return [int(o.key.rsplit("/", 1)[1]) for o in store.list(folder)]


def _tile_objects(store: MemoryStore) -> dict[str, bytes]:
    folder = layout.tiles_prefix(store.prefix, LOG)
    return {k: v for k, v in store.objects.items() if k.startswith(folder)}


def _expected_tiles(store: MemoryStore, sizes: list[int]) -> dict[str, bytes]:
    """The tiles of the log's tree at each checkpoint size, from its entries."""
    lines = read_lines(store, LOG)
    builder, expected, previous = TileBuilder(), {}, 0
    for size in sizes:
        done = builder.extend((line, leaf_hash(line)) for line in lines[previous:size])
        served = set(tiles_at(previous))
        tiles = dict([*done, *(p for p in builder.partials() if p[0] not in served)])
        assert sorted(tiles, key=_order) == sorted(new_tiles(previous, size), key=_order)
        expected.update({layout.tile_key(store.prefix, LOG, t): d for t, d in tiles.items()})
        previous = size
    return expected


def _order(t: layout.TileName) -> tuple[int, int, int]:
    return (t.level, t.index, t.width)


def _verified(store: MemoryStore, signer: Signer) -> None:
    reports, general = verify_store(store, signer.verifier(), ORIGIN_PREFIX)
    findings = [str(f) for r in reports for f in r.findings] + [str(f) for f in general]
    assert all_ok(reports, general), findings
    assert not [f for f in findings if "/tile/" in f or f.endswith("/checkpoint")], findings


def test_published_tiles_are_exactly_the_trees_tiles(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore("audit", versioned=True)
    _write(store, signer, tmp_path / "wal", *_batches(7, 97), bundle_max_entries=100)
    sizes = _checkpoint_sizes(store)
    assert sizes == [97 * i for i in range(1, 8)]
    assert _tile_objects(store) == _expected_tiles(store, sizes)
    # One version per tile (each written once); `checkpoint` holds every checkpoint in turn.
    latest = layout.latest_checkpoint_key(store.prefix, LOG)
    for key in _tile_objects(store):
        assert len(store.history[key]) == 1, key
    versions = [data for _, data in store.history[latest]]
    signed = [store.objects[layout.checkpoint_key(store.prefix, LOG, n)] for n in sizes]
    assert versions == signed
    _verified(store, signer)


def test_restart_resumes_tiles_from_its_partial_tiles(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore("audit", versioned=True)
    wal = tmp_path / "wal"
    _write(store, signer, wal, *_batches(3, 90), stop=True)
    first = _tile_objects(store)
    _write(store, signer, wal, *_batches(3, 90, "s"), stop=True)
    sizes = _checkpoint_sizes(store)
    assert _tile_objects(store) == _expected_tiles(store, sizes)
    assert all(len(store.history[key]) == 1 for key in _tile_objects(store))
    assert all(store.objects[k] == v for k, v in first.items())
    _verified(store, signer)


def test_log_from_before_tiles_gets_every_tile_at_its_next_start(
    tmp_path: Path, signer: Signer
) -> None:
    store = MemoryStore("audit", versioned=True)
    wal = tmp_path / "wal"
    _write(store, signer, wal, *_batches(4, 150), tiles=False, stop=True)
    assert not _tile_objects(store)
    old_size = _checkpoint_sizes(store)[-1]
    _write(store, signer, wal, *_batches(2, 70, "s"), stop=True)
    sizes = [s for s in _checkpoint_sizes(store) if s > old_size]
    # Every tile of the tree at the old size (built from the bundles), then as usual.
    assert _tile_objects(store) == _expected_tiles(store, [old_size, *sizes])
    tiled = verify_tiles(store, LOG, Keyring.of(signer.verifier()), ORIGIN_PREFIX)
    assert tiled.ok and tiled.entries == sizes[-1], [str(f) for f in tiled.findings]
    _verified(store, signer)


def test_planted_tile_is_recorded_and_publication_goes_on(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore("audit", versioned=True)
    planted = layout.tile_key(store.prefix, LOG, layout.TileName(0, 0))
    store.put_once(planted, b"\x00" * 8192, None)
    _write(store, signer, tmp_path / "wal", *_batches(3, 100), stop=True)
    foreign = [e for e in read_entries(store, LOG) if e.get(EVENT) == EVENT_FOREIGN]
    assert [e[OBJECT] for e in foreign] == [layout.relative(store.prefix, planted)]
    sizes = _checkpoint_sizes(store)
    assert sizes[-1] == 302  # 300 entries, the foreign record and the stop entry
    expected = _expected_tiles(store, sizes)
    stored = _tile_objects(store)
    assert stored.pop(planted) != expected.pop(planted)
    assert stored == expected


class SlowStore(MemoryStore):
    """S3's latency on every put, and how many puts were in flight at most."""

    def __init__(self) -> None:
        super().__init__("audit", versioned=True)
        self.in_flight = 0
        self.most = 0
        self._lock = threading.Lock()

    def put_once(self, key: str, data: bytes, retention: Retention | None) -> None:
        with self._lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        time.sleep(0.02)
        with self._lock:
            self.in_flight -= 1
        super().put_once(key, data, retention)


def test_tiles_of_a_busy_round_are_put_in_parallel(tmp_path: Path, signer: Signer) -> None:
    """10,000 entries a round (20,000/s) complete ~80 tiles: put one at a time,
    at S3's latency, they would hold publication back by seconds a round."""
    store = SlowStore()
    _write(store, signer, tmp_path / "wal", *_batches(1, 10_000), bundle_max_entries=10_000)
    assert store.most == TILE_PUTS_IN_FLIGHT
    assert _tile_objects(store) == _expected_tiles(store, _checkpoint_sizes(store))
