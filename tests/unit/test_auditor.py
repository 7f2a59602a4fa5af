"""The auditor on our in-memory store: versions, state file, log status.

MemoryStore(versioned=True) behaves like an S3 bucket with versioning (what
Object Lock requires): an overwrite adds a version, a delete adds a marker.
The same attacks run against moto's S3 server in tests/integration/test_tamper.py.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.audit import statefile
from extproc.audit.verify import AuditOptions, AuditResult, audit_store
from extproc.core import entry, layout
from extproc.core.checkpoint import Checkpoint, make_extensions, sign_checkpoint
from extproc.core.claim import Claim
from extproc.core.findings import ERROR, WARNING
from extproc.core.merkle import CompactRange, leaf_hash
from extproc.core.note import Signer
from extproc.core.state import AuditState, LogState
from extproc.core.status import log_status
from extproc.errors import ConfigError
from extproc.store.base import Retention, RetentionPolicy
from extproc.store.memory import _EPOCH, MemoryStore

SIGNER = Signer.generate("auditor-test")
LOG = "pod-a"
MIN = 60_000


class Writer:
    """Publishes a log the way the server does: claim, bundle, checkpoint."""

    def __init__(self, store: MemoryStore, writer: str = "ab") -> None:
        self.store, self.writer = store, writer
        self.tree, self.prev, self.size, self.time_ms = CompactRange(), "", 0, 1_000_000

    def publish(
        self, count: int, *, final: bool = False, after_ms: int = 1000, kind: str = "request"
    ) -> None:
        lines = []
        for _ in range(count):
            line = entry.encode({"v": 1, "seq": self.size, "prev": self.prev, "kind": kind})
            leaf = leaf_hash(line)
            self.tree.append(leaf)
            self.prev, self.size = leaf.hex(), self.size + 1
            lines.append(line)
        first, last = self.size - count, self.size - 1
        keep = Retention("COMPLIANCE", _EPOCH + timedelta(days=30))
        claim = Claim(first, last, self.prev, self.writer).to_bytes()
        self.store.put_once(layout.claim_key("", LOG, first), claim, keep)
        data = b"".join(line + b"\n" for line in lines)
        self.store.put_once(layout.bundle_key("", LOG, first, last), data, keep)
        self.time_ms += after_ms
        ext = make_extensions(self.time_ms, self.writer, final=final)
        cp = Checkpoint(f"test/{LOG}", self.size, self.tree.root(), ext)
        note = sign_checkpoint(cp, SIGNER)
        self.store.put_once(layout.checkpoint_key("", LOG, self.size), note, keep)


def _audit(store: MemoryStore, **kwargs: object) -> AuditResult:
    options = AuditOptions(now_ms=10_000_000, **kwargs)  # type: ignore[arg-type]
    return audit_store(store, SIGNER.verifier(), options)


def _messages(result: AuditResult) -> list[str]:
    return [f.message for r in result.reports for f in r.findings] + [
        f.message for f in result.general
    ]


def _log(store: MemoryStore, bundles: int = 4) -> Writer:
    w = Writer(store)
    for _ in range(bundles):
        w.publish(5)
    return w


def test_clean_versioned_log_verifies() -> None:
    store = MemoryStore(versioned=True)
    _log(store)
    result = _audit(store)
    assert result.ok, _messages(result)
    assert result.reports[0].entries == 20


def test_new_version_over_bundle_reported_and_original_verified() -> None:
    store = MemoryStore(versioned=True)
    _log(store)
    key = layout.bundle_key("", LOG, 5, 9)
    store.overwrite(key, store.get(key).replace(b"request", b"respons"))
    result = _audit(store)
    assert not result.ok
    finding = next(f for f in result.reports[0].findings if f.key == key)
    assert "overwritten after publication" in finding.message
    assert "v" in finding.message and "later" in finding.message
    assert not any("root hash" in m for m in _messages(result))  # the original is intact


def test_delete_marker_on_checkpoint_reported_and_original_verified() -> None:
    store = MemoryStore(versioned=True)
    _log(store)
    key = layout.checkpoint_key("", LOG, 20)
    store.delete(key)
    result = _audit(store)
    assert any("deleted after publication" in m for m in _messages(result))
    assert result.reports[0].latest is not None and result.reports[0].latest.size == 20


def test_delete_on_unversioned_store_is_a_missing_object() -> None:
    store = MemoryStore()
    _log(store)
    store.delete(layout.bundle_key("", LOG, 5, 9))
    assert any("are missing" in m for m in _messages(_audit(store)))


def test_short_retention_is_a_finding() -> None:
    store = MemoryStore(versioned=True)
    _log(store)
    key = layout.bundle_key("", LOG, 0, 4)
    store.retentions[key] = Retention("GOVERNANCE", _EPOCH + timedelta(days=2))
    result = _audit(store, min_retention_days=30)
    assert [f.key for r in result.reports for f in r.findings] == [key]
    assert _audit(store, min_retention_days=1).ok


def test_state_resumes_and_rehashes_only_new_entries() -> None:
    store = MemoryStore(versioned=True)
    w = _log(store, 2)
    first = _audit(store)
    assert first.ok
    w.publish(5)
    second = _audit(store, state=first.state)
    assert second.ok, _messages(second)
    report = second.reports[0]
    assert (report.resumed_from, report.rehashed, report.entries) == (10, 5, 15)
    assert second.state.logs[LOG].size == 15


def test_state_rollback_detected() -> None:
    store = MemoryStore()
    w = _log(store, 3)
    state = _audit(store).state
    store.delete(layout.checkpoint_key("", LOG, w.size))
    result = _audit(store, state=state)
    rollback = next(f for r in result.reports for f in r.findings if "rollback" in f.message)
    assert len(rollback.evidence) == 2
    assert not result.ok


def test_state_fork_detected() -> None:
    store, other = MemoryStore(), MemoryStore()
    _log(store, 2)
    w = Writer(other)
    w.publish(5)
    w.publish(5, kind="exchange")  # another history of the same size, same key
    first = _audit(other)
    assert first.ok
    state = first.state
    result = _audit(store, state=state)
    assert any(m.startswith("fork:") for m in _messages(result)), _messages(result)


def test_log_deleted_since_state_detected() -> None:
    store = MemoryStore()
    _log(store, 1)
    state = _audit(store).state
    result = _audit(MemoryStore(), state=state)
    assert any("has no objects any more" in m for m in _messages(result))


def test_state_file_round_trip_and_atomic_save(tmp_path: Path) -> None:
    store = MemoryStore(versioned=True)
    _log(store, 3)
    state = _audit(store).state
    assert AuditState.from_bytes(state.to_bytes()) == state
    path = tmp_path / "state.json"
    statefile.save_state(path, state)
    assert statefile.load_state(path) == state
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left
    assert statefile.load_state(tmp_path / "missing.json") == AuditState()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.replace(b'"size": 15', b'"size": 14'),
        lambda d: d.replace(b'"version": 1', b'"version": 9'),
        lambda d: d[:-5],
    ],
    ids=["frontier_does_not_give_root", "unknown_version", "truncated"],
)
def test_corrupt_state_file_rejected(mutate: object) -> None:
    store = MemoryStore()
    _log(store, 3)
    data = _audit(store).state.to_bytes()
    assert b'"size": 15' in data
    with pytest.raises(ConfigError):
        AuditState.from_bytes(mutate(data))  # type: ignore[operator]


@settings(max_examples=50, deadline=None)
@given(size=st.integers(0, 300), bit=st.integers(0, 255))
def test_state_frontier_bit_flip_rejected(size: int, bit: int) -> None:
    tree = CompactRange()
    tree.extend(leaf_hash(b"%d" % i) for i in range(size))
    state = LogState(
        "o", size, tree.root(), "", tree.hashes, leaf_hash(b"x").hex() if size else "", "t"
    )
    assert AuditState.from_bytes(AuditState({"l": state}).to_bytes()).logs["l"] == state
    if size:
        hashes = list(tree.hashes)
        i = bit % len(hashes)
        hashes[i] = bytes([hashes[i][0] ^ (1 << (bit % 8))]) + hashes[i][1:]
        bad = LogState("o", size, tree.root(), "", tuple(hashes), state.last_leaf, "t")
        with pytest.raises(ConfigError):
            AuditState.from_bytes(AuditState({"l": bad}).to_bytes())


# --- log status -----------------------------------------------------------------


def _cp(size: int, t: int, writer: str = "aa", *, final: bool = False) -> Checkpoint:
    return Checkpoint("o/l", size, b"\0" * 32, make_extensions(t, writer, final=final))


@pytest.mark.parametrize(
    ("checkpoints", "now", "state", "gaps"),
    [
        ([_cp(1, 0), _cp(2, MIN)], 2 * MIN, "open", []),
        ([_cp(1, 0), _cp(2, 20 * MIN)], 21 * MIN, "open", [("quiet", 0, 20 * MIN)]),
        ([_cp(1, 0), _cp(2, MIN, final=True)], 60 * MIN, "closed", []),
        ([_cp(1, 0), _cp(2, 30 * MIN, "bb")], 31 * MIN, "open", [("crash", 0, 30 * MIN)]),
        (
            [_cp(1, 0, final=True), _cp(2, 30 * MIN, "bb", final=True)],
            40 * MIN,
            "closed",
            [("stopped", 0, 30 * MIN)],
        ),
        ([_cp(1, 0)], 30 * MIN, "open", [("quiet", 0, 30 * MIN)]),  # silent until now
    ],
    ids=["busy", "quiet_gap", "closed", "crash_then_restart", "clean_restart", "open_silent"],
)
def test_log_status(
    checkpoints: list[Checkpoint], now: int, state: str, gaps: list[tuple[str, int, int]]
) -> None:
    status = log_status(checkpoints, now, 5 * MIN)
    assert status.state == state
    assert [(g.kind, g.start_ms, g.end_ms) for g in status.gaps] == gaps
    assert status.age_s == (now - max(c.timestamp_ms or 0 for c in checkpoints)) / 1000


def test_log_status_window() -> None:
    cps = [_cp(1, 0), _cp(2, 20 * MIN, final=True)]
    assert log_status(cps, 60 * MIN, 5 * MIN, since_ms=30 * MIN).in_window is False
    inside = log_status(cps, 60 * MIN, 5 * MIN, since_ms=10 * MIN, until_ms=15 * MIN)
    assert inside.in_window and [g.kind for g in inside.gaps] == ["quiet"]
    assert log_status([], 0, MIN).state == "empty"


# The bucket's default retention rule: recorded on first use, held to later.


def _ruled(mode: str = "COMPLIANCE", days: int = 30) -> MemoryStore:
    store = MemoryStore(versioned=True)
    store.default_rule = RetentionPolicy(mode, days)
    _log(store)
    return store


def test_first_run_records_the_rule_and_holds_objects_to_it() -> None:
    store = _ruled()
    first = _audit(store, state=AuditState())
    assert first.ok, _messages(first)
    assert first.state.retention is not None
    assert (first.state.retention.mode, first.state.retention.days) == ("COMPLIANCE", 30)
    assert AuditState.from_bytes(first.state.to_bytes()).retention == first.state.retention
    assert first.retention.min_days == 30


@pytest.mark.parametrize(
    ("lowered", "expect"),
    [
        (RetentionPolicy("GOVERNANCE", 30), "lowered to GOVERNANCE 30 days"),
        (RetentionPolicy("COMPLIANCE", 1), "lowered to COMPLIANCE 1 days"),
        (None, "rule was removed"),
    ],
)
def test_rule_lowered_since_recorded_is_an_error(
    lowered: RetentionPolicy | None, expect: str
) -> None:
    store = _ruled()
    state = _audit(store, state=AuditState()).state
    store.default_rule = lowered
    result = _audit(store, state=state)
    assert not result.ok
    finding = next(f for f in result.general if expect in f.message)
    assert finding.severity == ERROR and "recorded COMPLIANCE 30 days" in finding.message
    # The bar stays where it was recorded, not where the bucket is now.
    assert result.retention.min_days == 30
    # Accepting the change deliberately records the new rule.
    if lowered is not None:
        accepted = _audit(store, state=state, accept_retention=True)
        assert accepted.ok, _messages(accepted)
        assert accepted.state.retention is not None
        assert accepted.state.retention.days == lowered.days


def test_raised_rule_is_not_a_finding_and_the_record_stays() -> None:
    store = _ruled(days=30)
    state = _audit(store, state=AuditState()).state
    store.default_rule = RetentionPolicy("COMPLIANCE", 90)
    result = _audit(store, state=state)
    assert result.ok, _messages(result)
    assert result.state.retention is not None and result.state.retention.days == 30


def test_with_state_new_objects_are_held_to_the_recorded_rule() -> None:
    store = MemoryStore(versioned=True)
    store.default_rule = RetentionPolicy("COMPLIANCE", 30)
    w = _log(store)
    state = _audit(store, state=AuditState()).state
    # The rule is lowered and a writer restarted under it locks new objects for a day.
    store.default_rule = RetentionPolicy("COMPLIANCE", 1)
    w.publish(5)
    short = Retention("COMPLIANCE", _EPOCH + timedelta(days=1))
    new = [
        layout.claim_key("", LOG, 20),
        layout.bundle_key("", LOG, 20, 24),
        layout.checkpoint_key("", LOG, 25),
    ]
    for key in new:
        store.retentions[key] = short
    result = _audit(store, state=state)
    assert not result.ok
    assert sorted(f.key for r in result.reports for f in r.findings) == sorted(new)
    assert all("less than the required 30" in f.message for f in result.reports[0].findings)
    # Without the state the bar would have followed the bucket down.
    assert _audit(store).reports[0].ok


def test_without_state_a_rule_weaker_than_the_objects_is_a_warning() -> None:
    store = _ruled(mode="GOVERNANCE", days=1)  # objects carry COMPLIANCE 30 days
    result = _audit(store)
    assert result.ok  # a warning: the writer may set its own, longer retention
    warning = next(f for f in result.general if "weaker than the objects" in f.message)
    assert warning.severity == WARNING
    assert "GOVERNANCE 1 days" in warning.message and "COMPLIANCE 30" in warning.message
    store.default_rule = None
    assert any("has no default retention rule" in f.message for f in _audit(store).general)
    store.default_rule = RetentionPolicy("COMPLIANCE", 30)
    assert not _audit(store).general
