"""Tampering with a published log: what an adversary with write access to the
bucket does, for tests/integration/test_tamper.py and scripts/attack.py.

Each attack of TAMPERING changes a copy of a store that holds one verified
log (a Pristine) and returns the finding `verify` must print; `truncated`
and `forked` make the stores of the attacks across runs (rollback, fork)
that `verify --state` must catch.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extproc.core import layout
from extproc.core.checkpoint import Checkpoint, sign_checkpoint
from extproc.core.claim import Claim
from extproc.core.merkle import CompactRange, leaf_hash
from extproc.core.note import Signer, verify_note
from extproc.keys import load_signer


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


class Bucket:
    """The tampering surface: what an attacker with write access can do."""

    def __init__(self, read: Callable[[str], bytes], write: Callable[[str, bytes], None],
                 delete: Callable[[str], None]) -> None:  # fmt: skip
        self.read, self.write, self.delete = read, write, delete


def bundle_with(b: Bucket, p: Pristine, needle: bytes) -> str:
    """A bundle holding request entries (the first may hold only the writer's start)."""
    return next(k for k in p.keys("bundle") if needle in b.read(k))


def flip_byte(b: Bucket, p: Pristine) -> str:
    key = bundle_with(b, p, b'"path":"/')
    data = bytearray(b.read(key))
    at = data.index(b'"path":"/') + len('"path":"/')
    data[at] = ord("X") if data[at] != ord("X") else ord("Y")
    b.write(key, bytes(data))
    return "root hash does not match"


def delete_bundle(b: Bucket, p: Pristine) -> str:
    b.delete(p.keys("bundle")[1])
    return "are missing"


def resign_checkpoint(b: Bucket, p: Pristine) -> str:
    key = p.keys("checkpoint")[-1]
    text = verify_note(b.read(key), p.signer.verifier())
    b.write(key, sign_checkpoint(Checkpoint.from_text(text), Signer.generate(p.signer.name)))
    return "checkpoint does not verify"


def swap_bundles(b: Bucket, p: Pristine) -> str:
    first, second = p.keys("bundle")[1:3]
    a, c = b.read(first), b.read(second)
    b.write(first, c)
    b.write(second, a)
    return "seq field says"


def drop_entry(b: Bucket, p: Pristine) -> str:
    key = p.keys("bundle")[2]
    lines = b.read(key).splitlines(keepends=True)
    b.write(key, b"".join(lines[:3] + lines[4:]))
    return "entries, its name says"


def forge_entry(b: Bucket, p: Pristine) -> str:
    key = bundle_with(b, p, b'"method":"GET"')
    data = b.read(key).replace(b'"method":"GET"', b'"method":"PUT"', 1)
    b.write(key, data)
    return "root hash does not match"


def stray_object(b: Bucket, p: Pristine) -> str:
    b.write(f"logs/{p.log_id}/entries/notes.txt", b"nothing to see")
    return "not part of the log layout"


def checkpoint_renamed(b: Bucket, p: Pristine) -> str:
    # An old, validly signed checkpoint presented under a larger size.
    old = p.keys("checkpoint")[0]
    b.write(layout.checkpoint_key("", p.log_id, 10**6), b.read(old))
    return "its name says"


def insert_bundle(b: Bucket, p: Pristine) -> str:
    # A validly named bundle that duplicates entries already in the log.
    key = p.keys("bundle")[1]
    name = layout.parse_key("", key)
    assert name is not None and name.bundle is not None
    b.write(layout.bundle_key("", p.log_id, name.bundle.first, name.bundle.last + 1), b.read(key))
    return "bundle is not the one claimed"


@dataclass(frozen=True)
class Tamper:
    run: Callable[[Bucket, Pristine], str]  # returns the finding expected on a plain store
    # On S3 the original version stays: what the auditor says instead (None: same).
    on_s3: str | None = None
    # A foreign object the log does not claim: reported, and the log still verifies.
    warning: bool = False


OVERWRITTEN, DELETED = "object overwritten after publication", "object deleted after publication"
TAMPERING = {
    "bundle_byte_changed": Tamper(flip_byte, OVERWRITTEN),
    "bundle_deleted": Tamper(delete_bundle, DELETED),
    "checkpoint_signed_by_another_key": Tamper(resign_checkpoint, OVERWRITTEN),
    "bundles_swapped": Tamper(swap_bundles, OVERWRITTEN),
    "entry_removed_from_bundle": Tamper(drop_entry, OVERWRITTEN),
    "entry_rewritten": Tamper(forge_entry, OVERWRITTEN),
    "foreign_object_under_log": Tamper(stray_object, warning=True),
    "checkpoint_replayed_under_other_size": Tamper(checkpoint_renamed),
    "bundle_inserted": Tamper(insert_bundle, warning=True),
}


def local_bucket(root: Path) -> Bucket:
    def write(key: str, data: bytes) -> None:
        path = root / key
        if path.exists():
            path.chmod(0o644)  # the local store leaves files read-only; an attacker does not care
        path.write_bytes(data)

    return Bucket(lambda k: (root / k).read_bytes(), write, lambda k: (root / k).unlink())


def checkpoint_sizes(p: Pristine) -> list[int]:
    return [int(k.rsplit("/", 1)[1]) for k in p.keys("checkpoint")]


def truncated(p: Pristine, dest: Path, size: int) -> Path:
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


def forked(p: Pristine, dest: Path) -> Path:
    """Another log of the same size, signed with the real key (the key leaked):
    the last entry rewritten, its claim and the latest checkpoint redone."""
    shutil.copytree(p.root, dest)
    b = local_bucket(dest)
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
    note = sign_checkpoint(Checkpoint(cp.origin, cp.size, tree.root(), cp.extensions), p.signer)
    b.write(cp_key, note)
    latest = layout.latest_checkpoint_key("", p.log_id)  # the tlog-tiles copy, if published
    if (dest / latest).exists():
        b.write(latest, note)
    return dest


def make_pristine(make_stack: Callable[..., Any], requests: int = 30) -> Pristine:
    """A verified log of `requests` requests through real Envoy into a real server
    (bundles of 10 entries), closed by SIGTERM; `make_stack` as stack_factory's."""
    stack = make_stack(extra_args=["--bundle-max-entries", "10"]).start()
    result = stack.send(requests, concurrency=2)
    if len(result.request_ids) != requests:
        raise AssertionError(f"{len(result.request_ids)} of {requests} requests answered 2xx")
    if stack.stop_server() != 0:
        raise AssertionError(stack.server_log())
    signer = load_signer(stack.key_path)
    pristine = Pristine(Path(stack.store_url), signer.verifier().to_text(), stack.log_id, signer)
    if len(pristine.keys("bundle")) < 4:
        raise AssertionError(f"{len(pristine.keys('bundle'))} bundles: too few to tamper with")
    return pristine
