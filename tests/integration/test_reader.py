"""The store reader (extproc/audit/reader.py): which objects are the log's, and that
`verify` and `search` are fed by one function, so they see the same log.

Logs are written by the real writer (tests/helpers.py) on our in-memory store;
the attacker's moves are MemoryStore's own (a planted object, an overwrite,
a delete).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from extproc.audit.reader import LogReader, entry_lines
from extproc.audit.search import Filters, StoreSearch
from extproc.audit.verify import verify_store
from extproc.core import entry, layout
from extproc.core.bundle import bundle_bytes
from extproc.core.claim import Claim
from extproc.core.keyring import Keyring
from extproc.core.note import Signer
from extproc.core.verify import LogChecker
from extproc.store.base import Retention
from extproc.store.memory import MemoryStore
from tests.helpers import ORIGIN_PREFIX, read_lines, write_log

LOG_ID = "pod-a"
KEEP = Retention("COMPLIANCE", datetime(2030, 1, 1, tzinfo=UTC))
HONEST = [(0, 7), (8, 15), (16, 23)]


def _store(tmp_path: Path, signer: Signer, **kwargs: Any) -> MemoryStore:
    """24 request entries in bundles of 8 (0-7, 8-15, 16-23), one checkpoint."""
    store = MemoryStore(versioned=kwargs.pop("versioned", False))
    entries = [{"kind": "request", "rid": f"r{i}"} for i in range(24)]
    write_log(store, signer, tmp_path / "wal", LOG_ID, entries, bundle_max_entries=8, **kwargs)
    return store


def _planted_bundle(first: int, last: int) -> bytes:
    lines = [
        entry.encode({"v": 1, "seq": seq, "prev": "", "kind": "request", "rid": "planted"})
        for seq in range(first, last + 1)
    ]
    return bundle_bytes(lines, compress=False)


def _ranges(reader: LogReader, keyring: Keyring | None = None) -> list[tuple[int, int]]:
    return [(n.first, n.last) for _, n in reader.bundles_in_effect(keyring)]


def test_bundles_planted_next_to_the_writers_are_not_the_log(
    tmp_path: Path, signer: Signer
) -> None:
    store = _store(tmp_path, signer)
    honest = read_lines(store, LOG_ID)
    # One at a position the writer's claim decides, one off the chain (overlapping two).
    store.put_once(layout.bundle_key("", LOG_ID, 8, 20), _planted_bundle(8, 20), KEEP)
    store.put_once(layout.bundle_key("", LOG_ID, 4, 11), _planted_bundle(4, 11), KEEP)
    assert _ranges(LogReader.open(store, LOG_ID)) == HONEST
    assert list(entry_lines(store, LOG_ID)) == honest


def test_claim_by_an_untrusted_key_decides_nothing_given_a_keyring(
    tmp_path: Path, signer: Signer
) -> None:
    """A planted bundle with a signed claim of a later epoch: taken at its word
    without a keyring (callers that check a signed root), ignored with one."""
    store = _store(tmp_path, signer)
    planted = _planted_bundle(8, 20)
    store.put_once(layout.bundle_key("", LOG_ID, 8, 20), planted, KEEP)
    origin = layout.origin_for(ORIGIN_PREFIX, LOG_ID)
    forged = Claim(8, 20, "0" * 64, "evil", 2, origin)
    store.put_once(
        layout.claim_key("", LOG_ID, 8, epoch=2),
        forged.sign(Signer.generate("attacker")).to_bytes(),
        KEEP,
    )
    reader = LogReader.open(store, LOG_ID)
    assert _ranges(reader, Keyring.of(signer.verifier())) == HONEST
    assert _ranges(reader) == [(0, 7), (8, 20)]  # 21 has no bundle: the chain ends


def test_verify_and_search_are_fed_alike(tmp_path: Path, signer: Signer) -> None:
    store = _store(tmp_path, signer, versioned=True)
    key = layout.bundle_key("", LOG_ID, 0, 7)
    store.overwrite(key, store.get(key).replace(b'"r3"', b'"rX"'))
    store.delete(layout.bundle_key("", LOG_ID, 16, 23))
    store.put_once(layout.bundle_key("", LOG_ID, 8, 20), _planted_bundle(8, 20), KEEP)
    store.put_once(f"logs/{LOG_ID}/entries/notes.txt", b"", KEEP)

    reports, general = verify_store(store, signer.verifier())
    search = StoreSearch(store, Filters(), verifier=signer.verifier())
    lines = [m.line for m in search.matches()]
    assert lines == read_lines(store, LOG_ID)  # the originals, the planted bundle skipped

    def messages(found: list[object]) -> list[str]:
        # Object Lock retention is verify's own check (the log was written without it).
        return sorted(str(f) for f in found if "retention" not in str(f))

    (verified,), (searched,) = reports, search.stats.reports
    assert messages(list(verified.findings)) == messages(list(searched.findings))
    # The bucket-level retention warning (objects locked, no default rule) is verify's own.
    assert [g for g in general if "retention" not in g.message] == search.stats.general == []
    assert any("overwritten after publication" in str(f) for f in verified.findings)
    assert any("deleted after publication" in str(f) for f in verified.findings)
    assert any("not part of the log layout" in str(f) for f in verified.findings)
    assert any("not the one claimed at 8" in str(f) for f in verified.findings)
    assert (verified.entries, searched.entries) == (24, 24)


def test_unreadable_bundles_are_reported_and_yield_no_lines(tmp_path: Path, signer: Signer) -> None:
    store = _store(tmp_path, signer, gzip=True)
    broken = layout.bundle_key("", LOG_ID, 8, 15, gzip=True)
    gone = layout.bundle_key("", LOG_ID, 16, 23, gzip=True)
    store.overwrite(broken, b"not gzip")  # no versions: the original is lost
    reader = LogReader.open(store, LOG_ID)
    store.delete(gone)  # listed, then gone before it is read
    checker = LogChecker(LOG_ID, signer.verifier())
    read = [(b.name.first, b.in_log, len(b.lines)) for b in reader.check(checker, prefetch=2)]
    assert read == [(0, True, 8), (8, False, 0), (16, False, 0)]
    report = checker.finish()
    assert not report.ok
    found = [(f.key, f.message) for f in report.findings]
    assert any(k == broken and "bundle is not valid gzip" in m for k, m in found)
    assert any(k == gone and "listed, then gone" in m for k, m in found)


def test_reads_ahead_in_the_order_asked(tmp_path: Path, signer: Signer) -> None:
    reader = LogReader.open(_store(tmp_path, signer), LOG_ID)
    bundles = reader.bundles()[::-1]
    for prefetch in (0, 1, 2, 5):
        got = [(key, data) for key, _, data in reader.read_ahead(bundles, prefetch)]
        assert [key for key, _ in got] == [key for key, _ in bundles]
        assert all(isinstance(data, bytes) and data.count(b"\n") == 8 for _, data in got)
