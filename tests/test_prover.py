"""`prove` and `check-proof`: proofs built from a published log, verified offline.

The log is written by the real appender and publisher in-process (as in
tests/test_publisher.py) to a local directory, or copied to moto's S3 server.
Proof hashes are checked against the RFC 9162 reference in tests/test_merkle.py.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from pathlib import Path

import pytest

from extproc.core import entry, layout
from extproc.core.checkpoint import Checkpoint, sign_checkpoint
from extproc.core.note import Signer, parse_note
from extproc.core.tlogproof import TlogProof
from extproc.errors import ConfigError, VerificationError
from extproc.log.appender import AuditLog
from extproc.log.publisher import Publisher, PublisherConfig, bundle_lines
from extproc.log.wal import WAL
from extproc.prover import EntryNotFoundError, LeafCache, Prover
from extproc.store.base import ObjectStore
from extproc.store.local import LocalStore
from extproc.store.memory import MemoryStore
from extproc.store.s3 import S3Store
from tests.conftest import MotoServer, run_cli
from tests.test_merkle import ref_mth, ref_path, ref_proof

LOG_ID = "pod-a"
ORIGIN = layout.origin_for("extproc-audit", LOG_ID)
SIZES = (25, 47)  # two publications: checkpoints at these sizes


def write_log(store: ObjectStore, wal_dir: Path, signer: Signer, *, gzip: bool = False) -> None:
    """Publish SIZES[-1] request entries (rid "req-<seq>") in bundles of 10."""

    async def scenario() -> None:
        wal = WAL(wal_dir)
        audit_log = AuditLog(wal, wal.recover())
        config = PublisherConfig(LOG_ID, ORIGIN, bundle_max_entries=10, max_age=0.0, gzip=gzip)
        publisher = Publisher(audit_log, wal, store, signer, config, writer_id="0123abcd")
        await publisher.reconcile()
        for size in SIZES:
            start = audit_log.size
            await asyncio.gather(
                *(
                    audit_log.append({"kind": "request", "rid": f"req-{seq}"})
                    for seq in range(start, size)
                )
            )
            await publisher.publish()
        audit_log.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def published_entries(store: ObjectStore) -> list[bytes]:
    lines: list[bytes] = []
    for obj in store.list(layout.log_prefix(store.prefix, LOG_ID) + "entries/"):
        name = layout.parse_key(store.prefix, obj.key)
        assert name is not None and name.bundle is not None
        lines.extend(bundle_lines(store.get(obj.key), compressed=name.bundle.gzip).splitlines())
    return lines


@pytest.fixture
def local_log(tmp_path: Path, signer: Signer) -> tuple[str, list[bytes]]:
    store = LocalStore(tmp_path / "store")
    write_log(store, tmp_path / "wal", signer)
    entries = published_entries(store)
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
    entries = published_entries(store)
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
    entries = published_entries(store)
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
