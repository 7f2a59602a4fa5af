"""`verify` against an adversary with write access to the bucket.

One real log is produced once (Envoy + audit server), then each attack is
applied to a fresh copy, on the local store and on S3 (moto, and LocalStack,
which enforces Object Lock as AWS does), and the real CLI must exit 1 naming
what is wrong; an object the log never claims (a foreign object) cannot change
it, so the CLI exits 0 and names it in a warning. On S3 (versioned, as Object Lock
requires) an overwrite or a delete leaves the original version: the finding
is the new version or the delete marker, and the original still verifies.
A state file (`--state`) adds the attacks across runs: rollback and fork.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from extproc.core import layout
from extproc.core.checkpoint import Checkpoint, sign_checkpoint
from extproc.core.claim import Claim
from extproc.core.merkle import CompactRange, leaf_hash, verify_consistency
from extproc.core.note import Signer, verify_note
from extproc.errors import VerificationError
from extproc.keys import load_signer
from tests.conftest import S3Server, run_cli, stack_factory

pytestmark = [pytest.mark.envoy]


@dataclass
class Pristine:
    root: Path  # local store directory holding one verified log
    vkey: str
    log_id: str
    signer: Signer

    def keys(self, kind: str) -> list[str]:
        folder = "entries" if kind == "bundle" else "checkpoints"
        base = self.root / "logs" / self.log_id / folder
        return sorted(f"logs/{self.log_id}/{folder}/{p.name}" for p in base.iterdir())


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pristine]:
    base = tmp_path_factory.mktemp("pristine")
    with stack_factory(base) as make:
        stack = make(extra_args=["--bundle-max-entries", "10"]).start()
        result = stack.send(30, concurrency=2)
        assert len(result.request_ids) == 30
        assert stack.stop_server() == 0, stack.server_log()
        signer = load_signer(stack.key_path)
        root = Path(stack.store_url)
        pristine = Pristine(root, signer.verifier().to_text(), stack.log_id, signer)
        assert len(pristine.keys("bundle")) >= 4
        yield pristine


class Bucket:
    """The tampering surface: what an attacker with write access can do."""

    def __init__(self, read: Callable[[str], bytes], write: Callable[[str, bytes], None],
                 delete: Callable[[str], None]) -> None:  # fmt: skip
        self.read, self.write, self.delete = read, write, delete


def _bundle_with(b: Bucket, p: Pristine, needle: bytes) -> str:
    """A bundle holding request entries (the first may hold only the writer's start)."""
    return next(k for k in p.keys("bundle") if needle in b.read(k))


def _flip_byte(b: Bucket, p: Pristine) -> str:
    key = _bundle_with(b, p, b'"path":"/')
    data = bytearray(b.read(key))
    at = data.index(b'"path":"/') + len('"path":"/')
    data[at] = ord("X") if data[at] != ord("X") else ord("Y")
    b.write(key, bytes(data))
    return "root hash does not match"


def _delete_bundle(b: Bucket, p: Pristine) -> str:
    b.delete(p.keys("bundle")[1])
    return "are missing"


def _resign_checkpoint(b: Bucket, p: Pristine) -> str:
    key = p.keys("checkpoint")[-1]
    text = verify_note(b.read(key), p.signer.verifier())
    b.write(key, sign_checkpoint(Checkpoint.from_text(text), Signer.generate(p.signer.name)))
    return "checkpoint does not verify"


def _swap_bundles(b: Bucket, p: Pristine) -> str:
    first, second = p.keys("bundle")[1:3]
    a, c = b.read(first), b.read(second)
    b.write(first, c)
    b.write(second, a)
    return "seq field says"


def _drop_entry(b: Bucket, p: Pristine) -> str:
    key = p.keys("bundle")[2]
    lines = b.read(key).splitlines(keepends=True)
    b.write(key, b"".join(lines[:3] + lines[4:]))
    return "entries, its name says"


def _forge_entry(b: Bucket, p: Pristine) -> str:
    key = _bundle_with(b, p, b'"method":"GET"')
    data = b.read(key).replace(b'"method":"GET"', b'"method":"PUT"', 1)
    b.write(key, data)
    return "root hash does not match"


def _stray_object(b: Bucket, p: Pristine) -> str:
    b.write(f"logs/{p.log_id}/entries/notes.txt", b"nothing to see")
    return "not part of the log layout"


def _checkpoint_renamed(b: Bucket, p: Pristine) -> str:
    # An old, validly signed checkpoint presented under a larger size.
    old = p.keys("checkpoint")[0]
    b.write(layout.checkpoint_key("", p.log_id, 10**6), b.read(old))
    return "its name says"


def _insert_bundle(b: Bucket, p: Pristine) -> str:
    # A validly named bundle that duplicates entries already in the log.
    key = p.keys("bundle")[1]
    name = layout.parse_key("", key)
    assert name is not None and name.bundle is not None
    b.write(layout.bundle_key("", p.log_id, name.bundle.first, name.bundle.last + 1), b.read(key))
    return "bundle is not the one claimed"


@dataclass(frozen=True)
class Attack:
    run: Callable[[Bucket, Pristine], str]  # returns the finding expected on a plain store
    # On S3 the original version stays: what the auditor says instead (None: same).
    on_s3: str | None = None
    # A foreign object the log does not claim: reported, and the log still verifies.
    warning: bool = False


OVERWRITTEN, DELETED = "object overwritten after publication", "object deleted after publication"
ATTACKS = {
    "bundle_byte_changed": Attack(_flip_byte, OVERWRITTEN),
    "bundle_deleted": Attack(_delete_bundle, DELETED),
    "checkpoint_signed_by_another_key": Attack(_resign_checkpoint, OVERWRITTEN),
    "bundles_swapped": Attack(_swap_bundles, OVERWRITTEN),
    "entry_removed_from_bundle": Attack(_drop_entry, OVERWRITTEN),
    "entry_rewritten": Attack(_forge_entry, OVERWRITTEN),
    "foreign_object_under_log": Attack(_stray_object, warning=True),
    "checkpoint_replayed_under_other_size": Attack(_checkpoint_renamed),
    "bundle_inserted": Attack(_insert_bundle, warning=True),
}


def _local_bucket(root: Path) -> Bucket:
    def write(key: str, data: bytes) -> None:
        path = root / key
        if path.exists():
            path.chmod(0o644)  # the local store leaves files read-only; an attacker does not care
        path.write_bytes(data)

    return Bucket(lambda k: (root / k).read_bytes(), write, lambda k: (root / k).unlink())


def _upload(s3api: S3Server, root: Path, *, days: int = 1) -> tuple[str, Any, str]:
    """A copy of a local store in a fresh Object Lock bucket: (bucket, client, url)."""
    bucket = s3api.new_bucket(days=days)
    s3 = s3api.s3()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            key = "audit/" + path.relative_to(root).as_posix()
            s3.put_object(
                Bucket=bucket, Key=key, Body=path.read_bytes(), ChecksumAlgorithm="SHA256"
            )
    return bucket, s3, f"s3://{bucket}/audit"


def _s3_bucket(s3: Any, bucket: str) -> Bucket:
    # An attacker who writes over keys (a new version) or deletes them (a
    # delete marker): what PutObject/DeleteObject permission allows even on a
    # COMPLIANCE bucket (LocalStack, which enforces the lock, allows it too).
    return Bucket(
        lambda k: s3.get_object(Bucket=bucket, Key="audit/" + k)["Body"].read(),
        lambda k, d: s3.put_object(Bucket=bucket, Key="audit/" + k, Body=d,
                                   ChecksumAlgorithm="SHA256"),
        lambda k: s3.delete_object(Bucket=bucket, Key="audit/" + k),
    )  # fmt: skip


def test_pristine_log_verifies(pristine: Pristine) -> None:
    result = run_cli("verify", str(pristine.root), "--vkey", pristine.vkey)
    assert result.returncode == 0, result.stdout
    assert "VALID" in result.stdout
    assert "status: closed" in result.stdout  # SIGTERM left a final checkpoint


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_tampering_detected_local(attack: Attack, pristine: Pristine, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(pristine.root, root)
    expected = attack.run(_local_bucket(root), pristine)
    result = run_cli("verify", str(root), "--vkey", pristine.vkey)
    if attack.warning:
        assert result.returncode == 0, result.stdout
        line = next(x for x in result.stdout.splitlines() if expected in x)
        assert line.lstrip().startswith("warning:") and "foreign object" in line
        return
    assert result.returncode == 1, result.stdout
    assert expected in result.stdout
    assert "INVALID" in result.stdout


@pytest.mark.s3
@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_tampering_detected_s3(attack: Attack, pristine: Pristine, s3api: S3Server) -> None:
    bucket, s3, url = _upload(s3api, pristine.root)
    assert run_cli("verify", url, "--vkey", pristine.vkey).returncode == 0
    expected = attack.run(_s3_bucket(s3, bucket), pristine)
    result = run_cli("verify", url, "--vkey", pristine.vkey, "--format", "json")
    assert result.returncode == (0 if attack.warning else 1), result.stdout
    doc = json.loads(result.stdout)
    findings = [f for log in doc["logs"] for f in log["findings"]] + doc["findings"]
    messages = [f["message"] for f in findings]
    assert any((attack.on_s3 or expected) in m for m in messages), messages
    if attack.warning:
        assert {f["severity"] for f in findings if expected in f["message"]} == {"warning"}
    if attack.on_s3 is not None:
        # The original versions are what got verified: the log itself is intact.
        assert not any("root hash does not match" in m for m in messages), messages


@pytest.mark.s3
def test_new_version_over_checkpoint_names_both_versions_s3(
    pristine: Pristine, s3api: S3Server
) -> None:
    bucket, s3, url = _upload(s3api, pristine.root)
    key = pristine.keys("checkpoint")[-1]
    _resign_checkpoint(_s3_bucket(s3, bucket), pristine)
    versions = s3.list_object_versions(Bucket=bucket, Prefix="audit/" + key)["Versions"]
    assert len(versions) == 2
    result = run_cli("verify", url, "--vkey", pristine.vkey)
    assert result.returncode == 1
    line = next(x for x in result.stdout.splitlines() if OVERWRITTEN in x)
    assert all(v["VersionId"] in line for v in versions), line
    assert "checkpoint does not verify" not in result.stdout  # the original was read


@pytest.mark.s3
def test_delete_marker_on_bundle_still_verifies_original_s3(
    pristine: Pristine, s3api: S3Server
) -> None:
    bucket, s3, url = _upload(s3api, pristine.root)
    s3.delete_object(Bucket=bucket, Key="audit/" + pristine.keys("bundle")[1])
    result = run_cli("verify", url, "--vkey", pristine.vkey)
    assert result.returncode == 1
    assert DELETED in result.stdout
    assert "are missing" not in result.stdout  # the hidden original was read


@pytest.mark.s3
def test_short_retention_is_refused_or_a_finding_s3(pristine: Pristine, s3api: S3Server) -> None:
    bucket, s3, url = _upload(s3api, pristine.root, days=30)
    assert run_cli("verify", url, "--vkey", pristine.vkey).returncode == 0
    key = "audit/" + pristine.keys("bundle")[0]
    shorten = {
        "Bucket": bucket,
        "Key": key,
        "Retention": {
            "Mode": "GOVERNANCE",
            "RetainUntilDate": datetime.now(UTC) + timedelta(days=2),
        },
        "BypassGovernanceRetention": True,
    }
    if s3api.strict:  # COMPLIANCE: nobody shortens it
        with pytest.raises(ClientError) as refused:
            s3.put_object_retention(**shorten)
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
        assert run_cli("verify", url, "--vkey", pristine.vkey).returncode == 0
        return
    # moto lets it happen, as a GOVERNANCE bypass would: verify must notice.
    s3.put_object_retention(**shorten)
    result = run_cli("verify", url, "--vkey", pristine.vkey)
    assert result.returncode == 1, result.stdout
    assert "less than the required 30" in result.stdout
    explicit = run_cli("verify", url, "--vkey", pristine.vkey, "--min-retention-days", "1")
    assert explicit.returncode == 0, explicit.stdout


@pytest.mark.s3
def test_lowered_bucket_rule_is_reported_s3(
    pristine: Pristine, localstack: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer allowed PutBucketObjectLockConfiguration lowers the default rule
    (S3 accepts it, also on COMPLIANCE buckets): verify must say so. LocalStack
    only: moto refuses any lock configuration change on a bucket with objects."""
    for name, value in localstack.env().items():
        monkeypatch.setenv(name, value)
    bucket, s3, url = _upload(localstack, pristine.root, days=30)
    state = tmp_path / "state.json"
    verify = ("verify", url, "--vkey", pristine.vkey)
    assert run_cli(*verify, "--state", str(state)).returncode == 0
    recorded = state.read_bytes()

    def set_rule(rule: dict[str, Any] | None) -> None:
        config: dict[str, Any] = {"ObjectLockEnabled": "Enabled"}
        if rule is not None:
            config["Rule"] = {"DefaultRetention": rule}
        s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration=config)

    set_rule({"Mode": "GOVERNANCE", "Days": 1})
    lowered = run_cli(*verify, "--state", str(state))
    assert lowered.returncode == 1, lowered.stdout
    assert "error: the bucket's default retention rule was lowered to GOVERNANCE 1 days" in (
        lowered.stdout
    )
    assert state.read_bytes() == recorded  # an invalid run keeps the record
    # Without the state the objects' own retention gives it away (a warning).
    stateless = run_cli(*verify)
    assert stateless.returncode == 0, stateless.stdout
    assert "warning: the bucket's default retention rule (GOVERNANCE 1 days) is weaker" in (
        stateless.stdout
    )
    set_rule(None)
    removed = run_cli(*verify, "--state", str(state), "--format", "json")
    assert removed.returncode == 1
    doc = json.loads(removed.stdout)
    assert doc["retention"]["rule"] is None
    assert doc["retention"]["recorded"]["days"] == 30 and doc["retention"]["min_days"] == 30
    assert any("rule was removed" in f["message"] for f in doc["findings"])
    # The operator restores the rule: valid again, nothing to accept.
    set_rule({"Mode": "COMPLIANCE", "Days": 30})
    assert run_cli(*verify, "--state", str(state)).returncode == 0


@pytest.mark.s3
def test_object_without_retention_is_a_finding(pristine: Pristine, s3api: S3Server) -> None:
    bucket = s3api.new_bucket(lock=False)
    s3 = s3api.s3()
    for path in sorted(pristine.root.rglob("*")):
        if path.is_file():
            s3.put_object(Bucket=bucket, Key=path.relative_to(pristine.root).as_posix(),
                          Body=path.read_bytes())  # fmt: skip
    result = run_cli("verify", f"s3://{bucket}", "--vkey", pristine.vkey)
    assert result.returncode == 1
    assert "no Object Lock retention" in result.stdout


def test_verify_with_wrong_key_is_invalid(pristine: Pristine) -> None:
    other = Signer.generate(pristine.signer.name).verifier().to_text()
    result = run_cli("verify", str(pristine.root), "--vkey", other)
    assert result.returncode == 1
    assert "no valid signed checkpoint" in result.stdout


def test_empty_store_does_not_verify(tmp_path: Path, pristine: Pristine) -> None:
    result = run_cli("verify", str(tmp_path), "--vkey", pristine.vkey)
    assert result.returncode == 1
    assert "no logs found" in result.stdout


def test_deep_verification_parses_every_entry(pristine: Pristine, tmp_path: Path) -> None:
    assert run_cli("verify", str(pristine.root), "--vkey", pristine.vkey, "--deep").returncode == 0
    root = tmp_path / "store"
    shutil.copytree(pristine.root, root)
    _forge_entry(_local_bucket(root), pristine)
    result = run_cli("verify", str(root), "--vkey", pristine.vkey, "--deep")
    assert result.returncode == 1
    assert "root hash does not match" in result.stdout


# --- Across runs: the state file (trust on first use, then incremental) --------


def _sizes(p: Pristine) -> list[int]:
    return [int(k.rsplit("/", 1)[1]) for k in p.keys("checkpoint")]


def _truncated(p: Pristine, dest: Path, size: int) -> Path:
    """The store as it was when the checkpoint at `size` was the latest."""

    def keep(path: Path) -> bool:
        name = layout.parse_key("", path.relative_to(p.root).as_posix())
        assert name is not None
        if name.kind == "checkpoint":
            return name.size is not None and name.size <= size
        if name.kind == "claim":
            return name.size is not None and name.size < size
        return name.bundle is not None and name.bundle.last < size

    for path in p.root.rglob("*"):
        if path.is_file() and keep(path):
            target = dest / path.relative_to(p.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return dest


def _forked(p: Pristine, dest: Path) -> Path:
    """Another log of the same size, signed with the real key (the key leaked):
    the last entry rewritten, its claim and the latest checkpoint redone."""
    shutil.copytree(p.root, dest)
    b = _local_bucket(dest)
    last_bundle = p.keys("bundle")[-1]
    lines = b.read(last_bundle).splitlines(keepends=True)
    lines[-1] = lines[-1].replace(b'"stop"', b'"stap"')
    assert b'"stap"' in lines[-1]
    b.write(last_bundle, b"".join(lines))
    leaves = [leaf_hash(line.rstrip(b"\n")) for k in p.keys("bundle")
              for line in b.read(k).splitlines(keepends=True)]  # fmt: skip
    tree = CompactRange()
    tree.extend(leaves)
    name = layout.parse_key("", last_bundle)
    assert name is not None and name.bundle is not None
    claim_key = layout.claim_key("", p.log_id, name.bundle.first)
    old_claim = Claim.from_bytes(b.read(claim_key))
    b.write(claim_key, Claim(old_claim.first, old_claim.last, leaves[-1].hex(),
                             old_claim.writer).to_bytes())  # fmt: skip
    cp_key = p.keys("checkpoint")[-1]
    cp = Checkpoint.from_text(verify_note(b.read(cp_key), p.signer.verifier()))
    assert cp.size == len(leaves)
    b.write(cp_key, sign_checkpoint(Checkpoint(cp.origin, cp.size, tree.root(), cp.extensions),
                                    p.signer))  # fmt: skip
    return dest


def _verify_state(url: str, p: Pristine, state: Path, *extra: str) -> Any:
    return run_cli("verify", url, "--vkey", p.vkey, "--state", str(state), *extra)


def test_incremental_run_rehashes_only_new_entries(pristine: Pristine, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    mid = _sizes(pristine)[len(_sizes(pristine)) // 2]
    old = _truncated(pristine, tmp_path / "old", mid)
    first = _verify_state(str(old), pristine, state)
    assert first.returncode == 0, first.stdout
    record = json.loads(state.read_text())["logs"][pristine.log_id]
    assert record["size"] == mid
    assert (
        base64.b64decode(record["root"])
        == Checkpoint.from_text(
            verify_note(record["checkpoint"].encode(), pristine.signer.verifier())
        ).root_hash
    )
    second = _verify_state(str(pristine.root), pristine, state, "--format", "json")
    assert second.returncode == 0, second.stdout
    log = json.loads(second.stdout)["logs"][0]
    total = _sizes(pristine)[-1]
    assert (log["resumed_from"], log["rehashed"], log["entries"]) == (mid, total - mid, total)
    # The RFC 9162 consistency proof mid -> total, as reported, verifies.
    proof = [base64.b64decode(h) for h in log["consistency_proof"]]
    latest_root = base64.b64decode(log["latest"]["root"])
    verify_consistency(mid, total, base64.b64decode(record["root"]), latest_root, proof)
    with pytest.raises(VerificationError):
        verify_consistency(mid, total, base64.b64decode(record["root"]), b"\0" * 32, proof)
    assert json.loads(state.read_text())["logs"][pristine.log_id]["size"] == total
    # A third run has nothing new to hash and still verifies.
    third = _verify_state(str(pristine.root), pristine, state, "--format", "json")
    assert json.loads(third.stdout)["logs"][0]["rehashed"] == 0
    assert json.loads(third.stdout)["logs"][0]["consistency_proof"] is None  # same size


def test_checkpoint_rollback_against_state_detected(pristine: Pristine, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    assert _verify_state(str(pristine.root), pristine, state).returncode == 0
    saved = state.read_bytes()
    older = _truncated(pristine, tmp_path / "older", _sizes(pristine)[-2])
    result = _verify_state(str(older), pristine, state)
    assert result.returncode == 1, result.stdout
    assert "rollback: latest checkpoint has tree size" in result.stdout
    assert result.stdout.count("evidence:") == 2  # both signed checkpoints shown
    assert state.read_bytes() == saved  # an invalid run never moves the state


def test_fork_against_state_detected(pristine: Pristine, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    fork = _forked(pristine, tmp_path / "fork")
    assert _verify_state(str(fork), pristine, state).returncode == 0  # self-consistent
    result = _verify_state(str(pristine.root), pristine, state, "--format", "json")
    assert result.returncode == 1, result.stdout
    findings = json.loads(result.stdout)["logs"][0]["findings"]
    fork_finding = next(f for f in findings if f["message"].startswith("fork:"))
    assert len(fork_finding["evidence"]) == 2
    assert fork_finding["evidence"][0] != fork_finding["evidence"][1]


def test_old_bundle_replaced_after_state_detected(pristine: Pristine, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    root = tmp_path / "store"
    shutil.copytree(pristine.root, root)
    assert _verify_state(str(root), pristine, state).returncode == 0
    _drop_entry(_local_bucket(root), pristine)  # below the verified size: not re-read
    result = _verify_state(str(root), pristine, state)
    assert result.returncode == 1, result.stdout
    assert "object changed since the last verified run" in result.stdout
    full = _verify_state(str(root), pristine, state, "--full")
    assert "entries, its name says" in full.stdout  # --full re-reads and finds the detail


@pytest.mark.s3
def test_rollback_and_fork_against_state_detected_s3(
    pristine: Pristine, s3api: S3Server, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    _, _, url = _upload(s3api, pristine.root)
    assert _verify_state(url, pristine, state).returncode == 0
    _, _, older = _upload(s3api, _truncated(pristine, tmp_path / "older", _sizes(pristine)[-2]))
    assert "rollback:" in _verify_state(older, pristine, state).stdout
    _, _, forked = _upload(s3api, _forked(pristine, tmp_path / "fork"))
    result = _verify_state(forked, pristine, state)
    assert result.returncode == 1
    assert "fork: checkpoint at tree size" in result.stdout


def test_since_until_select_logs_active_in_window(pristine: Pristine) -> None:
    before = run_cli("verify", str(pristine.root), "--vkey", pristine.vkey, "--until", "2001-01-01")
    assert before.returncode == 0, before.stdout
    assert "no log was active" in before.stdout
    now = run_cli("verify", str(pristine.root), "--vkey", pristine.vkey, "--since", "2001-01-01")
    assert f"log {pristine.log_id}: OK" in now.stdout
    # Same time syntax as `search`: a time without a zone is refused, not guessed.
    naive = run_cli(
        "verify", str(pristine.root), "--vkey", pristine.vkey, "--since", "2026-11-26T10:00"
    )
    assert naive.returncode == 2 and "no time zone" in naive.stderr


def test_json_output_schema(pristine: Pristine) -> None:
    result = run_cli("verify", str(pristine.root), "--vkey", pristine.vkey, "--format", "json")
    assert result.returncode == 0
    doc = json.loads(result.stdout)
    assert doc["valid"] is True and doc["logs_verified"] == 1
    log = doc["logs"][0]
    assert log["status"]["state"] == "closed"
    assert log["latest"]["final"] is True
    assert log["latest"]["size"] == log["entries"] == _sizes(pristine)[-1]
    assert log["findings"] == []
