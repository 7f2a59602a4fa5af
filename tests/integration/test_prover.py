"""`prove` and `check-proof`: proofs built from a published log, verified offline.

The log is written by the real appender and publisher in-process
(tests/helpers.py) to a local directory, or copied to moto's S3 server.
Proof hashes are checked against the RFC 9162 reference in tests/unit/test_merkle.py.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
from collections.abc import Mapping
from pathlib import Path

import pytest

from extproc.audit.prove import (
    MAX_LISTED_MATCHES,
    AmbiguousRequestIdError,
    EntryNotFoundError,
    EntryReporter,
    LeafCache,
    Prover,
    RequestMatch,
)
from extproc.core import entry, layout
from extproc.core.checkpoint import Checkpoint, sign_checkpoint
from extproc.core.note import Signer, parse_note
from extproc.core.tlogproof import TlogProof
from extproc.errors import ConfigError, VerificationError
from extproc.store.base import ObjectStore
from extproc.store.local import LocalStore
from extproc.store.memory import MemoryStore
from extproc.store.s3 import S3Store
from tests import helpers
from tests.conftest import MotoServer, run_cli
from tests.helpers import read_lines
from tests.unit.test_merkle import ref_mth, ref_path, ref_proof

LOG_ID = "pod-a"
ORIGIN = layout.origin_for("extproc-audit", LOG_ID)
SIZES = (25, 47)  # two publications: checkpoints at these sizes


def write_log(store: ObjectStore, wal_dir: Path, signer: Signer, *, gzip: bool = False) -> None:
    """Publish SIZES[-1] request entries (rid "req-<seq>") in bundles of 10."""
    batches = [
        [{"kind": "request", "rid": f"req-{seq}"} for seq in range(start, end)]
        for start, end in itertools.pairwise((0, *SIZES))
    ]
    helpers.write_log(
        store,
        signer,
        wal_dir,
        LOG_ID,
        *batches,
        writer_id="0123abcd",
        bundle_max_entries=10,
        gzip=gzip,
    )


@pytest.fixture
def local_log(tmp_path: Path, signer: Signer) -> tuple[str, list[bytes]]:
    store = LocalStore(tmp_path / "store")
    write_log(store, tmp_path / "wal", signer)
    entries = read_lines(store, LOG_ID)
    assert len(entries) == SIZES[-1]
    return str(tmp_path / "store"), entries


def vkey(signer: Signer) -> str:
    return signer.verifier().to_text()


# --- the prover ------------------------------------------------------------------------------


@pytest.mark.parametrize("gzip", [False, True], ids=["jsonl", "gzip"])
def test_inclusion_is_rfc_path_under_the_newest_checkpoint(
    tmp_path: Path, signer: Signer, gzip: bool
) -> None:
    store = LocalStore(tmp_path / "store")
    write_log(store, tmp_path / "wal", signer, gzip=gzip)
    entries = read_lines(store, LOG_ID)
    prover = Prover(store, LOG_ID, signer.verifier())
    for seq in (0, 9, 10, 24, 25, 46):
        inc = prover.inclusion(seq=seq)
        assert inc.entry == entries[seq]
        assert inc.checkpoint.size == SIZES[-1]
        assert inc.checkpoint.root_hash == ref_mth(entries)
        assert list(inc.hashes) == ref_path(seq, entries)
    older = prover.inclusion(seq=3, tree_size=SIZES[0])
    assert older.checkpoint.size == SIZES[0]
    assert list(older.hashes) == ref_path(3, entries[: SIZES[0]])


def test_request_id_finds_the_entry(local_log: tuple[str, list[bytes]], signer: Signer) -> None:
    url, entries = local_log
    inc = Prover(LocalStore(Path(url)), LOG_ID).inclusion(request_id="req-31")
    assert inc.index == 31
    assert entry.parse(inc.entry)["rid"] == "req-31"
    assert inc.entry == entries[31]


def test_consistency_is_rfc_proof(local_log: tuple[str, list[bytes]], signer: Signer) -> None:
    url, entries = local_log
    prover = Prover(LocalStore(Path(url)), LOG_ID, signer.verifier())
    proof = prover.consistency(SIZES[0])
    assert (proof.first, proof.second) == SIZES
    assert list(proof.hashes) == ref_proof(SIZES[0], entries)
    assert proof.first_note is not None and proof.second_note is not None
    mid = prover.consistency(7, 30)  # sizes without checkpoints: hashes only
    assert list(mid.hashes) == ref_proof(7, entries[:30])
    assert (mid.first_note, mid.second_note) == (None, None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seq": 47}, "entry 47 is not published"),
        ({"request_id": "nope"}, "no published entry has request id"),
        ({"seq": 30, "tree_size": 25}, "does not cover"),
        ({"seq": 3, "tree_size": 26}, "no valid signed checkpoint of size 26"),
    ],
)
def test_unknown_entry_or_size_not_found(
    local_log: tuple[str, list[bytes]], kwargs: dict[str, object], match: str
) -> None:
    prover = Prover(LocalStore(Path(local_log[0])), LOG_ID)
    with pytest.raises(EntryNotFoundError, match=match):
        prover.inclusion(**kwargs)  # type: ignore[arg-type]


def test_unknown_log_not_found(local_log: tuple[str, list[bytes]]) -> None:
    with pytest.raises(EntryNotFoundError, match="log pod-b not found"):
        Prover(LocalStore(Path(local_log[0])), "pod-b").latest_checkpoint()


def test_checkpoints_by_another_key_are_skipped(
    local_log: tuple[str, list[bytes]], signer: Signer
) -> None:
    """A forged newest checkpoint (other key) is not used; the older genuine one is."""
    store = LocalStore(Path(local_log[0]))
    entries = local_log[1]
    forged = Checkpoint(ORIGIN, 60, ref_mth(entries), ())
    store.put_once(
        layout.checkpoint_key(store.prefix, LOG_ID, 60),
        sign_checkpoint(forged, Signer.generate("test-audit")),
        None,
    )
    inc = Prover(store, LOG_ID, signer.verifier()).inclusion(seq=5)
    assert inc.checkpoint.size == SIZES[-1]


def test_changed_bundle_detected_before_proving(
    local_log: tuple[str, list[bytes]], signer: Signer
) -> None:
    """An entry rewritten in the store (no Object Lock locally): no proof is made."""
    root = Path(local_log[0])
    key = layout.bundle_key("", LOG_ID, 0, 9)
    bundle = root / key
    original = bundle.read_bytes()
    assert b'"req-3"' in original
    bundle.chmod(0o644)
    bundle.write_bytes(original.replace(b'"req-3"', b'"req-X"'))
    prover = Prover(LocalStore(root), LOG_ID, signer.verifier())
    with pytest.raises(VerificationError, match="do not match the signed root"):
        prover.inclusion(seq=20)
    with pytest.raises(VerificationError, match="do not match the signed root"):
        prover.consistency(SIZES[0])


def test_overwritten_bundle_on_versioned_store_proves_the_original(
    tmp_path: Path, signer: Signer
) -> None:
    """S3 with Object Lock keeps the original version under a new one or a delete
    marker: the proof is made from what the log wrote, as verify reads it."""
    store = MemoryStore(versioned=True)
    write_log(store, tmp_path / "wal", signer)
    entries = read_lines(store, LOG_ID)
    key = layout.bundle_key("", LOG_ID, 0, 9)
    store.overwrite(key, store.get(key).replace(b'"req-3"', b'"req-X"'))
    store.delete(layout.bundle_key("", LOG_ID, 10, 19))
    inc = Prover(store, LOG_ID, signer.verifier()).inclusion(request_id="req-3")
    assert (inc.index, inc.entry) == (3, entries[3])
    assert list(inc.hashes) == ref_path(3, entries)


def test_leaf_cache_is_bounded() -> None:
    cache = LeafCache(max_leaves=25)
    for i in range(4):
        cache.put(f"b{i}", [bytes(32)] * 10)
    assert cache.get("b0") is None and cache.get("b1") is None
    assert cache.get("b3") is not None
    cache.put("huge", [bytes(32)] * 26)
    assert cache.get("huge") is None


def test_seq_and_request_id_are_exclusive(local_log: tuple[str, list[bytes]]) -> None:
    with pytest.raises(ConfigError):
        Prover(LocalStore(Path(local_log[0])), LOG_ID).inclusion(seq=1, request_id="req-1")


# --- the command line ------------------------------------------------------------------------


def test_prove_then_check_proof(
    local_log: tuple[str, list[bytes]], signer: Signer, tmp_path: Path
) -> None:
    url, entries = local_log
    out = tmp_path / "e12.tlog-proof"
    r = run_cli("prove", url, "--log", LOG_ID, "--seq", "12", "--out", str(out))
    assert r.returncode == 0, r.stderr
    proof = TlogProof.from_text(out.read_text())
    assert (proof.index, proof.extra) == (12, entries[12])
    assert list(proof.hashes) == ref_path(12, entries)
    r = run_cli("check-proof", str(out), "--vkey", vkey(signer), "--origin", ORIGIN)
    assert r.returncode == 0, r.stderr
    assert f"OK: entry 12 is in log {ORIGIN} at signed tree size 47" in r.stdout


def test_prove_by_request_id_with_vkey_file(
    local_log: tuple[str, list[bytes]], signer: Signer, tmp_path: Path
) -> None:
    (tmp_path / "vkey").write_text(vkey(signer) + "\n")
    out = tmp_path / "p"
    r = run_cli(
        "prove", local_log[0], "--log", LOG_ID, "--request-id", "req-40", "--out", str(out),
        "--vkey", f"@{tmp_path / 'vkey'}", "--tree-size", "47",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert TlogProof.from_text(out.read_text()).index == 40
    assert run_cli("check-proof", str(out), "--vkey", f"@{tmp_path / 'vkey'}").returncode == 0


def _tamper(proof: TlogProof, how: str) -> TlogProof:
    assert proof.extra is not None
    if how == "entry-byte":
        return dataclasses.replace(proof, extra=proof.extra.replace(b"req-12", b"req-13"))
    if how == "hash-bit":
        first = bytes([proof.hashes[0][0] ^ 1]) + proof.hashes[0][1:]
        return dataclasses.replace(proof, hashes=(first, *proof.hashes[1:]))
    if how == "index":
        return dataclasses.replace(proof, index=proof.index + 1)
    if how == "re-signed":
        text, _ = parse_note(proof.checkpoint)
        note = sign_checkpoint(Checkpoint.from_text(text), Signer.generate("test-audit"))
        return dataclasses.replace(proof, checkpoint=note)
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["entry-byte", "hash-bit", "index", "re-signed"])
def test_tampered_proof_file_fails_with_exit_1(
    local_log: tuple[str, list[bytes]], signer: Signer, tmp_path: Path, how: str
) -> None:
    out = tmp_path / "p"
    assert (
        run_cli("prove", local_log[0], "--log", LOG_ID, "--seq", "12", "--out", str(out)).returncode
        == 0
    )
    tampered = _tamper(TlogProof.from_text(out.read_text()), how)
    out.write_text(tampered.to_text())
    r = run_cli("check-proof", str(out), "--vkey", vkey(signer))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "extproc-audit: invalid:" in r.stderr


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"hello\n", "not a tlog proof"),
        (b"\xff\xfe", "not UTF-8"),
        (None, "cannot read"),
    ],
    ids=["garbage", "binary", "missing"],
)
def test_unreadable_proof_file_exits_2(
    signer: Signer, tmp_path: Path, content: bytes | None, match: str
) -> None:
    path = tmp_path / "p"
    if content is not None:
        path.write_bytes(content)
    r = run_cli("check-proof", str(path), "--vkey", vkey(signer))
    assert r.returncode == 2, r.stderr
    assert match in r.stderr


def test_prove_unknown_seq_exits_2(local_log: tuple[str, list[bytes]], tmp_path: Path) -> None:
    r = run_cli(
        "prove", local_log[0], "--log", LOG_ID, "--seq", "999", "--out", str(tmp_path / "p")
    )
    assert r.returncode == 2
    assert "entry 999 is not published" in r.stderr
    assert not (tmp_path / "p").exists()


@pytest.mark.s3
def test_prove_on_s3_and_check_offline(
    moto: MotoServer, local_log: tuple[str, list[bytes]], signer: Signer, tmp_path: Path
) -> None:
    """Copy the published log to a locked moto bucket; prove from S3, check with no store."""
    bucket = moto.new_bucket()
    source = LocalStore(Path(local_log[0]))
    target = S3Store(bucket, "audit")
    for obj in source.list(layout.logs_prefix("")):
        target.put_once(layout.join("audit", obj.key), source.get(obj.key), None)
    out = tmp_path / "p"
    r = run_cli("prove", f"s3://{bucket}/audit", "--log", LOG_ID, "--seq", "46", "--out", str(out))
    assert r.returncode == 0, r.stderr
    proof = TlogProof.from_text(out.read_text())
    assert base64.b64encode(proof.extra or b"") and proof.extra == local_log[1][46]
    r = run_cli(
        "check-proof",
        str(out),
        "--vkey",
        vkey(signer),
        env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
    )
    assert r.returncode == 0, r.stderr


# --- request ids are not unique: duplicates are never silently chosen ---------------------------

MESH = {
    "auth": "mtls",
    "id": "spiffe://cluster.local/ns/shop/sa/web",
    "peer": "ipv4:10.0.0.7:41000",
}
# not the proxy of the workload that served the request: the writer marks it
FORGER = {"auth": "unauthenticated", "peer": "ipv4:10.9.9.9:5555", "dst_mismatch": True}
FLOOD = 23  # entries of rid "flood", written without `reporter` (as before reporters existed)
DUP_SEQS = (0, 27)  # rid "dup": the genuine request, then a forged exchange from another reporter


def write_duplicates_log(store: ObjectStore, wal_dir: Path, signer: Signer) -> list[bytes]:
    """30 entries in bundles of 10, checkpoints at sizes 10 and 30:

    0 request "dup" (MESH), 1 its response, 2-8 request "flood", 9 request
    "pair", [checkpoint 10] 10 its response (the next bundle), 11-26 request
    "flood", 27 exchange "dup" (FORGER), 28 request "single", 29 its response.
    """

    def request(rid: str, reporter: Mapping[str, object] | None = MESH) -> dict[str, object]:
        fields: dict[str, object] = {"kind": "request", "rid": rid, "req": {"path": "/pay"}}
        if reporter is not None:
            fields["reporter"] = dict(reporter)
        return fields

    def response(rid: str, ref: int) -> dict[str, object]:
        fields: dict[str, object] = {"kind": "response", "rid": rid, "ref": ref}
        return fields | {"resp": {"status": 200}, "reporter": dict(MESH)}

    forged = request("dup", FORGER) | {"kind": "exchange", "resp": {"status": 200}}
    helpers.write_log(
        store,
        signer,
        wal_dir,
        LOG_ID,
        [request("dup"), response("dup", 0)]
        + [request("flood", None) for _ in range(7)]
        + [request("pair")],
        [response("pair", 9)]
        + [request("flood", None) for _ in range(FLOOD - 7)]
        + [forged, request("single"), response("single", 28)],
        writer_id="0123abcd",
        bundle_max_entries=10,
    )
    entries = read_lines(store, LOG_ID)
    assert len(entries) == 30
    return entries


@pytest.fixture
def dup_log(tmp_path: Path, signer: Signer) -> tuple[str, list[bytes]]:
    store = LocalStore(tmp_path / "dup-store")
    return str(tmp_path / "dup-store"), write_duplicates_log(store, tmp_path / "dup-wal", signer)


def test_matches_by_request_id_lists_every_request_entry_with_its_reporter(
    dup_log: tuple[str, list[bytes]],
) -> None:
    url, entries = dup_log
    matches = Prover(LocalStore(Path(url)), LOG_ID).matches_by_request_id("dup")
    assert [(m.seq, m.kind, m.entry) for m in matches] == [
        (0, "request", entries[0]),
        (27, "exchange", entries[27]),
    ]
    assert [m.reporter for m in matches] == [
        EntryReporter("mtls", MESH["id"], MESH["peer"]),
        EntryReporter("unauthenticated", None, "ipv4:10.9.9.9:5555", dst_mismatch=True),
    ]
    assert all(m.ts == entry.parse(m.entry)["ts"] for m in matches)
    flood = Prover(LocalStore(Path(url)), LOG_ID).matches_by_request_id("flood")
    assert len(flood) == FLOOD and {m.reporter for m in flood} == {None}


def test_inclusion_by_forged_duplicate_request_id_raises_listing_both(
    dup_log: tuple[str, list[bytes]], signer: Signer
) -> None:
    prover = Prover(LocalStore(Path(dup_log[0])), LOG_ID, signer.verifier())
    with pytest.raises(AmbiguousRequestIdError) as info:
        prover.inclusion(request_id="dup")
    error = info.value
    assert isinstance(error, ConfigError)  # a usage error (exit 2), not tampering
    assert (error.total, [m.seq for m in error.matches]) == (2, list(DUP_SEQS))
    assert "2 entries carry request id 'dup' (seqs 0, 27)" in str(error)


def test_ambiguous_request_id_lists_at_most_20_seqs(dup_log: tuple[str, list[bytes]]) -> None:
    with pytest.raises(AmbiguousRequestIdError) as info:
        Prover(LocalStore(Path(dup_log[0])), LOG_ID).inclusion(request_id="flood")
    message = str(info.value)
    assert f"{FLOOD} entries carry request id 'flood'" in message
    listed = message.split("(seqs ")[1].split(" and ")[0].split(", ")
    assert len(listed) == MAX_LISTED_MATCHES == 20
    assert f"and {FLOOD - 20} more)" in message


def test_request_and_its_response_are_one_match(
    dup_log: tuple[str, list[bytes]], signer: Signer
) -> None:
    """Enforce mode writes a request and a response entry with the same rid: the
    request is proven, also when its response is in a newer bundle."""
    url, entries = dup_log
    prover = Prover(LocalStore(Path(url)), LOG_ID, signer.verifier())
    for rid, seq in (("pair", 9), ("single", 28)):
        assert [m.seq for m in prover.matches_by_request_id(rid)] == [seq]
        inc = prover.inclusion(request_id=rid)
        assert (inc.index, inc.entry) == (seq, entries[seq])
        assert entry.parse(inc.entry)["kind"] == "request"


def test_empty_request_id_is_refused(dup_log: tuple[str, list[bytes]]) -> None:
    prover = Prover(LocalStore(Path(dup_log[0])), LOG_ID)
    with pytest.raises(ConfigError, match="empty request id"):
        prover.inclusion(request_id="")


def test_match_lines_escape_and_quote_the_reporter() -> None:
    """A reporter identity comes from a certificate or an XFCC header: it is
    printed quoted and escaped, so it cannot fake another field or drive the terminal."""
    match = RequestMatch(
        5,
        b"{}",
        "request",
        "2026-11-26T00:00:00.000000Z",
        EntryReporter("xfcc\x1b[2K", 'spiffe://a" peer="10.0.0.1:1\r', "10.0.0.2:2\u202e"),
    )
    line = match.describe(LOG_ID)
    assert line.isprintable()
    assert line == (
        "log pod-a seq 5 kind request ts 2026-11-26T00:00:00.000000Z reporter "
        '"xfcc\\x1b[2K" id="spiffe://a\\" peer=\\"10.0.0.1:1\\r" peer="10.0.0.2:2\\u202e"'
    )
    legacy = dataclasses.replace(match, reporter=None).describe(LOG_ID)
    assert legacy.endswith(" reporter -")


def test_prove_request_id_forged_duplicate_is_not_silently_chosen(
    dup_log: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    out = tmp_path / "p.tlog-proof"
    r = run_cli("prove", dup_log[0], "--log", LOG_ID, "--request-id", "dup", "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert not out.exists()
    lines = r.stderr.splitlines()
    assert lines[-1] == "extproc-audit: error: 2 entries carry request id dup; prove one with --seq"
    first, forged = lines[:-1]
    assert first.startswith("log pod-a seq 0 kind request ts ")
    assert first.endswith(f'reporter mtls id="{MESH["id"]}" peer="{MESH["peer"]}"')
    assert forged.startswith("log pod-a seq 27 kind exchange ts ")
    assert forged.endswith(f'reporter unauthenticated peer="{FORGER["peer"]}" dst_mismatch')


def test_prove_request_id_duplicates_without_reporter_print_a_dash(
    dup_log: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    r = run_cli(
        "prove", dup_log[0], "--log", LOG_ID, "--request-id", "flood", "--out", str(tmp_path / "p")
    )
    assert r.returncode == 2
    *listed, last = r.stderr.splitlines()
    want = f"{FLOOD} entries carry request id flood; prove one with --seq"
    assert last == f"extproc-audit: error: {want}"
    assert len(listed) == FLOOD  # every match, not only the first 20
    assert all(" kind request ts " in line for line in listed)
    assert all(line.endswith(" reporter -") for line in listed)


def test_prove_request_id_all_writes_one_checked_proof_per_duplicate(
    dup_log: tuple[str, list[bytes]], signer: Signer, tmp_path: Path
) -> None:
    url, entries = dup_log
    out = tmp_path / "proofs" / "dup"  # created
    r = run_cli("prove", url, "--log", LOG_ID, "--request-id", "dup", "--all", "--out", str(out))
    assert r.returncode == 0, r.stderr
    files = sorted(out.iterdir(), key=lambda p: len(p.name))
    assert [p.name for p in files] == [f"{LOG_ID}-{seq}.tlog-proof" for seq in DUP_SEQS]
    for path, seq in zip(files, DUP_SEQS, strict=True):
        proof = TlogProof.from_text(path.read_text())
        assert (proof.index, proof.extra) == (seq, entries[seq])
        check = run_cli("check-proof", str(path), "--vkey", vkey(signer), "--origin", ORIGIN)
        assert check.returncode == 0, check.stderr
        assert f"OK: entry {seq} is in log {ORIGIN} at signed tree size 30" in check.stdout
    summaries = r.stderr.splitlines()
    assert len(summaries) == 2
    assert summaries[0].startswith(f"{files[0]}: entry 0 (request, reporter mtls id=")
    assert summaries[1].startswith(f"{files[1]}: entry 27 (exchange, reporter unauthenticated ")
    assert all("proven under signed tree size 30" in line for line in summaries)


def test_prove_request_id_all_reports_a_duplicate_its_checkpoint_does_not_cover(
    dup_log: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    """Under the older checkpoint (size 10) the forged entry 27 is not provable:
    the genuine one is written, the other named, and the exit code says so."""
    out = tmp_path / "proofs"
    r = run_cli(
        "prove", dup_log[0], "--log", LOG_ID, "--request-id", "dup", "--all", "--out", str(out),
        "--tree-size", "10",
    )  # fmt: skip
    assert r.returncode == 2
    assert [p.name for p in out.iterdir()] == [f"{LOG_ID}-0.tlog-proof"]
    assert "not proven: log pod-a seq 27 kind exchange" in r.stderr
    assert r.stderr.splitlines()[-1] == (
        "extproc-audit: error: 1 of 2 entries with request id dup not proven"
    )


def test_prove_request_id_single_match_still_writes_the_proof(
    dup_log: tuple[str, list[bytes]], signer: Signer, tmp_path: Path
) -> None:
    url, entries = dup_log
    out = tmp_path / "pair.tlog-proof"
    r = run_cli("prove", url, "--log", LOG_ID, "--request-id", "pair", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == (
        f"entry 9 of log {LOG_ID} proven under signed tree size 30 "
        f"({len(ref_path(9, entries))} hashes)"
    )
    assert TlogProof.from_text(out.read_text()).extra == entries[9]
    assert run_cli("check-proof", str(out), "--vkey", vkey(signer)).returncode == 0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--seq", "3", "--all"], "--all needs --request-id"),
        (["--request-id", "dup", "--all", "--out", "-"], "--out must be a directory"),
        (["--request-id", ""], "empty request id"),
    ],
    ids=["all-with-seq", "all-to-stdout", "empty-rid"],
)
def test_prove_request_id_usage_errors(
    dup_log: tuple[str, list[bytes]], tmp_path: Path, args: list[str], match: str
) -> None:
    out = ["--out", str(tmp_path / "p")] if "--out" not in args else []
    r = run_cli("prove", dup_log[0], "--log", LOG_ID, *args, *out)
    assert r.returncode == 2
    assert match in r.stderr
    assert not (tmp_path / "p").exists()


def test_prove_with_the_wrong_key_says_so(tmp_path: Path) -> None:
    signer = Signer.generate("right")
    store = LocalStore(tmp_path / "store")
    entries = [{"kind": "request", "rid": f"r{i}"} for i in range(3)]
    helpers.write_log(store, signer, tmp_path / "wal", "log-a", entries, final=True)
    wrong = Prover(store, "log-a", Signer.generate("wrong").verifier())
    with pytest.raises(EntryNotFoundError, match="signed by the given key"):
        wrong.inclusion(seq=1)
