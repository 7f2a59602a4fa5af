"""Object key layout under s3://<bucket>/<prefix>/ (DESIGN.md, fixed contract).

logs/<log id>/entries/<first seq:020d>-<last seq:020d>.jsonl[.gz]
logs/<log id>/checkpoints/<tree size:020d>

Added by this project (docs/FORMAT.md):

logs/<log id>/claims/<first seq:020d>[.e<epoch>]   which bundle starts at first seq
logs/<log id>/cosigned/<tree size:020d>            the checkpoint with witness cosignatures

Bundle keys name a range, so two writers cutting different ranges would never
collide on them; the claim key depends on the start alone, so the second
writer to reach a position always collides with the first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from extproc.errors import ConfigError

LOG_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_BUNDLE_RE = re.compile(r"([0-9]{20})-([0-9]{20})\.jsonl(\.gz)?")
_CHECKPOINT_RE = re.compile(r"[0-9]{20}")
_CLAIM_RE = re.compile(r"([0-9]{20})(?:\.e([2-9]|[1-9][0-9]{1,8}))?")
MAX_EPOCH = 999_999_999  # the largest epoch a claim key names (_CLAIM_RE)


def _is_log_id(log_id: str) -> bool:
    return bool(LOG_ID_RE.fullmatch(log_id)) and log_id not in (".", "..")


def validate_log_id(log_id: str) -> str:
    if not _is_log_id(log_id):
        raise ConfigError(f"invalid log id {log_id!r}: must match [A-Za-z0-9._-]{{1,128}}")
    return log_id


def join(prefix: str, key: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key


def relative(prefix: str, key: str) -> str:
    """`key` without the store prefix (`logs/<log id>/...`): how entries name objects,
    so a log copied under another prefix still names its own objects."""
    base = join(prefix, "")
    return key[len(base) :] if base and key.startswith(base) else key


def logs_prefix(prefix: str) -> str:
    return join(prefix, "logs/")


def log_prefix(prefix: str, log_id: str) -> str:
    return join(prefix, f"logs/{log_id}/")


def bundle_key(prefix: str, log_id: str, first: int, last: int, *, gzip: bool = False) -> str:
    ext = ".jsonl.gz" if gzip else ".jsonl"
    return join(prefix, f"logs/{log_id}/entries/{first:020d}-{last:020d}{ext}")


def checkpoint_key(prefix: str, log_id: str, size: int) -> str:
    return join(prefix, f"logs/{log_id}/checkpoints/{size:020d}")


def cosigned_key(prefix: str, log_id: str, size: int) -> str:
    """The checkpoint of `size` again, with the cosignatures witnesses returned
    (c2sp.org/tlog-cosignature): written once, after checkpoints/<size>."""
    return join(prefix, f"logs/{log_id}/cosigned/{size:020d}")


def claim_key(prefix: str, log_id: str, first: int, epoch: int = 1) -> str:
    """Epoch 1 claims keep the original name; a writer that met a foreign object
    at a key it had to write continues in epoch n >= 2 under `.e<n>` names."""
    suffix = f".e{epoch}" if epoch > 1 else ""
    return join(prefix, f"logs/{log_id}/claims/{first:020d}{suffix}")


def seq_folders(prefix: str, log_id: str) -> tuple[str, ...]:
    """The folders of a log whose keys start with a zero-padded seq or size."""
    base = log_prefix(prefix, log_id)
    return base + "checkpoints/", base + "entries/", base + "claims/", base + "cosigned/"


def start_after(folder: str, seq: int) -> str:
    """The key to list `folder` after so that keys numbered `seq` and up come next
    ("~" sorts after every character a key puts after its number)."""
    return f"{folder}{seq - 1:020d}~" if seq > 0 else ""


def claims_prefix(prefix: str, log_id: str) -> str:
    return join(prefix, f"logs/{log_id}/claims/")


def checkpoints_prefix(prefix: str, log_id: str) -> str:
    return join(prefix, f"logs/{log_id}/checkpoints/")


def origin_for(origin_prefix: str, log_id: str) -> str:
    return f"{origin_prefix.rstrip('/')}/{log_id}"


@dataclass(frozen=True)
class BundleName:
    first: int
    last: int
    gzip: bool


@dataclass(frozen=True)
class ObjectName:
    """What a key under `logs/` means: a bundle, a checkpoint, or unknown."""

    log_id: str
    kind: str  # "bundle" | "checkpoint" | "claim" | "cosigned" | "unknown"
    bundle: BundleName | None = None
    size: int | None = None  # tree size of a checkpoint (or cosigned); first seq of a claim
    epoch: int = 1  # of a claim


def parse_key(prefix: str, key: str) -> ObjectName | None:
    """Classify `key`; None if it is not under <prefix>/logs/<log id>/."""
    base = logs_prefix(prefix)
    if not key.startswith(base):
        return None
    log_id, _, rest = key[len(base) :].partition("/")
    if not _is_log_id(log_id):
        return None
    folder, _, name = rest.partition("/")
    if folder == "entries" and (m := _BUNDLE_RE.fullmatch(name)):
        first, last = int(m.group(1)), int(m.group(2))
        if first <= last:
            return ObjectName(log_id, "bundle", bundle=BundleName(first, last, bool(m.group(3))))
    if folder == "checkpoints" and _CHECKPOINT_RE.fullmatch(name):
        return ObjectName(log_id, "checkpoint", size=int(name))
    if folder == "cosigned" and _CHECKPOINT_RE.fullmatch(name):
        return ObjectName(log_id, "cosigned", size=int(name))
    if folder == "claims" and (m := _CLAIM_RE.fullmatch(name)):
        return ObjectName(log_id, "claim", size=int(m.group(1)), epoch=int(m.group(2) or 1))
    return ObjectName(log_id, "unknown")
