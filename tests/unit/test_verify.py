"""The verifier's quick chain check against entries built to fool it."""

from __future__ import annotations

from typing import Any

import pytest

from extproc.core import entry
from extproc.core.checkpoint import Checkpoint, make_extensions, sign_checkpoint
from extproc.core.claim import Claim
from extproc.core.layout import BundleName
from extproc.core.merkle import CompactRange, leaf_hash
from extproc.core.note import Signer
from extproc.core.verify import LogChecker

SIGNER = Signer.generate("verify-test")


def _log(entries: list[dict[str, Any]]) -> tuple[bytes, bytes, bytes]:
    """One bundle, its claim and a checkpoint over exactly these entries."""
    lines, tree, prev = [], CompactRange(), ""
    for seq, fields in enumerate(entries):
        fields = {"v": 1, "seq": seq, "prev": prev, **fields}
        line = entry.encode(fields)
        leaf = leaf_hash(line)
        tree.append(leaf)
        prev = leaf.hex()
        lines.append(line)
    cp = Checkpoint("test/log", len(lines), tree.root(), make_extensions(1, "ab"))
    claim = Claim(0, len(lines) - 1, prev, "ab").to_bytes()
    return b"\n".join(lines) + b"\n", claim, sign_checkpoint(cp, SIGNER)


def _check(data: bytes, claim: bytes, cp: bytes, count: int, *, deep: bool) -> list[str]:
    checker = LogChecker("log", SIGNER.verifier())
    checker.deep = deep
    checker.add_checkpoint("cp", count, cp)
    checker.add_claim("claim", 0, claim)
    checker.add_bundle("bundle", BundleName(0, count - 1, False), data)
    return [f.message for f in checker.finish().findings]


@pytest.mark.parametrize("deep", [False, True], ids=["quick", "deep"])
def test_writer_encoding_verifies(deep: bool) -> None:
    data, claim, cp = _log([{"kind": "request", "rid": str(i)} for i in range(5)])
    assert _check(data, claim, cp, 5, deep=deep) == []


@pytest.mark.parametrize("deep", [False, True], ids=["quick", "deep"])
def test_nested_object_before_prev_falls_back_to_full_parse(deep: bool) -> None:
    # "a" sorts before "prev" and holds an object: the quick check must not
    # trust the first "prev" it sees, the full parse decides (and accepts).
    data, claim, cp = _log([{"a": {"prev": "decoy"}, "kind": "request"} for _ in range(3)])
    assert _check(data, claim, cp, 3, deep=deep) == []


def test_decoy_prev_in_nested_object_does_not_hide_a_broken_chain() -> None:
    # A signed log whose top-level prev is wrong while a nested object earlier
    # on the line carries the right value: the chain break is still found.
    good, _, _ = _log([{"kind": "request"}, {"kind": "request"}])
    first = good.split(b"\n")[0]
    right = leaf_hash(first).hex()
    bad = entry.encode(
        {"a": {"prev": right}, "kind": "request", "prev": "00" * 32, "seq": 1, "v": 1}
    )
    data = first + b"\n" + bad + b"\n"
    tree = CompactRange()
    tree.extend([leaf_hash(first), leaf_hash(bad)])
    cp = sign_checkpoint(Checkpoint("test/log", 2, tree.root(), make_extensions(1, "ab")), SIGNER)
    claim = Claim(0, 1, leaf_hash(bad).hex(), "ab").to_bytes()
    findings = _check(data, claim, cp, 2, deep=False)
    assert any("prev hash mismatch" in f for f in findings), findings


def _signed(lines: list[bytes]) -> tuple[bytes, bytes, bytes]:
    """Sign whatever lines we are given, as a writer with a bug would."""
    tree = CompactRange()
    tree.extend([leaf_hash(line) for line in lines])
    cp = sign_checkpoint(
        Checkpoint("test/log", len(lines), tree.root(), make_extensions(1, "ab")), SIGNER
    )
    claim = Claim(0, len(lines) - 1, leaf_hash(lines[-1]).hex(), "ab").to_bytes()
    return b"\n".join(lines) + b"\n", claim, cp


def test_header_named_seq_does_not_confuse_the_quick_check() -> None:
    # A request header called "seq" sits inside req, before the top-level seq.
    data, claim, cp = _log(
        [{"kind": "request", "req": {"headers": {"seq": "7", "prev": "x"}}} for _ in range(4)]
    )
    assert _check(data, claim, cp, 4, deep=False) == []


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"kind": "request", "prev": "PREV", "seq": 5, "v": 1}, "seq field says 5"),
        ({"kind": "request", "prev": "00" * 32, "seq": 1, "v": 1}, "prev hash mismatch"),
        ({"kind": "request", "prev": "PREV-TRUNCATED", "seq": 1, "v": 1}, "prev hash mismatch"),
        ({"kind": "request", "seq": 1, "v": 1}, "entry 1"),
    ],
    ids=["wrong-seq", "wrong-prev", "truncated-prev", "no-prev"],
)
def test_signed_chain_break_found_by_quick_check(second: dict[str, Any], message: str) -> None:
    first = entry.encode({"kind": "request", "prev": "", "seq": 0, "v": 1})
    right = leaf_hash(first).hex()
    fields = {
        k: {"PREV": right, "PREV-TRUNCATED": right[:63]}.get(v, v) if isinstance(v, str) else v
        for k, v in second.items()
    }
    data, claim, cp = _signed([first, entry.encode(fields)])
    findings = _check(data, claim, cp, 2, deep=False)
    assert any(message in f for f in findings), findings


def _report(entries: list[dict[str, Any]]) -> Any:
    data, claim, cp = _log(entries)
    checker = LogChecker("log", SIGNER.verifier())
    checker.add_checkpoint("cp", len(entries), cp)
    checker.add_claim("claim", 0, claim)
    checker.add_bundle("bundle", BundleName(0, len(entries) - 1, False), data)
    return checker.finish()


def test_entries_from_unauthenticated_reporters_are_counted() -> None:
    unauth = {"auth": "unauthenticated", "peer": "ipv4:10.9.9.9:5"}
    xfcc = {"auth": "xfcc", "id": "spiffe://td/ns/a/sa/b", "peer": "ipv4:127.0.0.6:1"}
    report = _report(
        [
            {"kind": "writer", "event": "start"},
            {"kind": "request", "reporter": unauth},
            {"kind": "access", "reporter": unauth},
            {"kind": "request", "reporter": xfcc},
            # A header a client named: the same bytes, not the entry's reporter.
            {"kind": "request", "reporter": xfcc, "req": {"headers": {"auth": "unauthenticated"}}},
        ]
    )
    assert report.ok and report.unauthenticated == 2


def test_conflicting_outcomes_are_a_warning_naming_both_entries() -> None:
    report = _report(
        [
            {"kind": "request", "rid": "victim"},
            {"kind": "access", "rid": "victim", "ref": 0, "resp": {"status": 200}},
            {"kind": "access", "rid": "victim", "ref": 0, "conflict": 1, "resp": {"status": 500}},
            {"kind": "access", "rid": "x", "req": {"headers": {"conflict": "1"}}, "ref": 0},
        ]
    )
    assert report.ok  # the log is as written; which outcome is true is the auditor's question
    (finding,) = report.findings
    assert finding.severity == "warning" and finding.key == "bundle"
    assert finding.message.startswith(
        "entry 2: a second outcome of request entry 0, whose first outcome is entry 1"
    )
