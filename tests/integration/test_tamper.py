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
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from extproc.core.checkpoint import Checkpoint
from extproc.core.merkle import verify_consistency
from extproc.core.note import Signer, verify_note
from extproc.errors import VerificationError
from tests.conftest import S3Server, run_cli, stack_factory
from tests.tampering import (
    DELETED,
    OVERWRITTEN,
    TAMPERING,
    Bucket,
    Pristine,
    Tamper,
    checkpoint_sizes,
    drop_entry,
    forge_entry,
    forked,
    local_bucket,
    make_pristine,
    resign_checkpoint,
    truncated,
)

pytestmark = [pytest.mark.envoy]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pristine]:
    with stack_factory(tmp_path_factory.mktemp("pristine")) as make:
        yield make_pristine(make)


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


@pytest.mark.parametrize("attack", TAMPERING.values(), ids=TAMPERING.keys())
def test_tampering_detected_local(attack: Tamper, pristine: Pristine, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(pristine.root, root)
    expected = attack.run(local_bucket(root), pristine)
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
@pytest.mark.parametrize("attack", TAMPERING.values(), ids=TAMPERING.keys())
def test_tampering_detected_s3(attack: Tamper, pristine: Pristine, s3api: S3Server) -> None:
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
    resign_checkpoint(_s3_bucket(s3, bucket), pristine)
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
    forge_entry(local_bucket(root), pristine)
    result = run_cli("verify", str(root), "--vkey", pristine.vkey, "--deep")
    assert result.returncode == 1
    assert "root hash does not match" in result.stdout


# --- Across runs: the state file (trust on first use, then incremental) --------


def _verify_state(url: str, p: Pristine, state: Path, *extra: str) -> Any:
    return run_cli("verify", url, "--vkey", p.vkey, "--state", str(state), *extra)


def test_incremental_run_rehashes_only_new_entries(pristine: Pristine, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    mid = checkpoint_sizes(pristine)[len(checkpoint_sizes(pristine)) // 2]
    old = truncated(pristine, tmp_path / "old", mid)
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
    total = checkpoint_sizes(pristine)[-1]
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
    older = truncated(pristine, tmp_path / "older", checkpoint_sizes(pristine)[-2])
    result = _verify_state(str(older), pristine, state)
    assert result.returncode == 1, result.stdout
    assert "rollback: latest checkpoint has tree size" in result.stdout
    assert result.stdout.count("evidence:") == 2  # both signed checkpoints shown
    assert state.read_bytes() == saved  # an invalid run never moves the state


def test_fork_against_state_detected(pristine: Pristine, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    fork = forked(pristine, tmp_path / "fork")
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
    drop_entry(local_bucket(root), pristine)  # below the verified size: not re-read
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
    _, _, older = _upload(
        s3api, truncated(pristine, tmp_path / "older", checkpoint_sizes(pristine)[-2])
    )
    assert "rollback:" in _verify_state(older, pristine, state).stdout
    _, _, fork_url = _upload(s3api, forked(pristine, tmp_path / "fork"))
    result = _verify_state(fork_url, pristine, state)
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
    assert log["latest"]["size"] == log["entries"] == checkpoint_sizes(pristine)[-1]
    assert log["findings"] == []
