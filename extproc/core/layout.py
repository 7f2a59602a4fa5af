"""Object key layout under s3://<bucket>/<prefix>/ (DESIGN.md, fixed contract).

logs/<log id>/entries/<first seq:020d>-<last seq:020d>.jsonl[.gz]
logs/<log id>/checkpoints/<tree size:020d>

Added by this project (docs/FORMAT.md):

logs/<log id>/claims/<first seq:020d>[.e<epoch>]   which bundle starts at first seq
logs/<log id>/cosigned/<tree size:020d>            the checkpoint with witness cosignatures

The same log in the C2SP tlog-tiles layout (https://c2sp.org/tlog-tiles), with
`logs/<log id>/` as the tlog-tiles prefix, so that a standard client reads it:

logs/<log id>/checkpoint                      the latest signed checkpoint
logs/<log id>/tile/<L>/<N>[.p/<W>]            hash tiles (height 8)
logs/<log id>/tile/entries/<N>[.p/<W>]        entry bundles

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
TILE_WIDTH = 256  # c2sp.org/tlog-tiles: a full tile holds 256 hashes (height 8)
MAX_TILE_LEVEL = 63  # c2sp.org/tlog-tiles: <L> is 0..63
ENTRIES_LEVEL = -1  # a TileName of an entry bundle (the spec's tile/entries/...)
_TILE_LEVEL_RE = re.compile(r"0|[1-9][0-9]?")
_TILE_GROUP_RE = re.compile(r"[0-9]{3}")
_TILE_WIDTH_RE = re.compile(r"[1-9][0-9]{0,2}")


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


def latest_checkpoint_key(prefix: str, log_id: str) -> str:
    """tlog-tiles `<prefix>/checkpoint`: the latest signed checkpoint (one key,
    rewritten at each checkpoint; every version is kept under Object Lock)."""
    return join(prefix, f"logs/{log_id}/checkpoint")


def tiles_prefix(prefix: str, log_id: str) -> str:
    return join(prefix, f"logs/{log_id}/tile/")


@dataclass(frozen=True)
class TileName:
    """A tlog-tiles resource: hash tile `level` >= 0, or the entry bundle
    (`level` ENTRIES_LEVEL), number `index`, holding `width` hashes or entries
    (TILE_WIDTH: a full tile; fewer: the partial tile `.p/<width>`)."""

    level: int
    index: int
    width: int = TILE_WIDTH

    @property
    def partial(self) -> bool:
        return self.width < TILE_WIDTH

    def path(self) -> str:
        """`tile/<L>/<N>[.p/<W>]` or `tile/entries/<N>[.p/<W>]`, <N> in the spec's
        3-digit path elements (1234067 -> x001/x234/067)."""
        level = "entries" if self.level == ENTRIES_LEVEL else str(self.level)
        suffix = f".p/{self.width}" if self.partial else ""
        return f"tile/{level}/{tile_index_path(self.index)}{suffix}"

    @classmethod
    def from_path(cls, path: str) -> TileName | None:
        """The tile `path` (relative to the log's prefix) names, if it is one in
        the spec's canonical form; None otherwise."""
        parts = path.split("/")
        if len(parts) < 3 or parts[0] != "tile":
            return None
        if parts[1] == "entries":
            level = ENTRIES_LEVEL
        elif _TILE_LEVEL_RE.fullmatch(parts[1]) and int(parts[1]) <= MAX_TILE_LEVEL:
            level = int(parts[1])
        else:
            return None
        rest, width = parts[2:], TILE_WIDTH
        if len(rest) >= 2 and rest[-2].endswith(".p"):
            if not _TILE_WIDTH_RE.fullmatch(rest[-1]) or int(rest[-1]) >= TILE_WIDTH:
                return None
            width = int(rest[-1])
            rest = [*rest[:-2], rest[-2][:-2]]
        groups = [g[1:] for g in rest[:-1] if g.startswith("x")]
        if len(groups) != len(rest) - 1 or not all(
            _TILE_GROUP_RE.fullmatch(g) for g in [*groups, rest[-1]]
        ):
            return None
        index = int("".join([*groups, rest[-1]]))
        name = cls(level, index, width)
        return name if name.path() == path else None  # canonical: no x000/ in front


def tile_index_path(index: int) -> str:
    """<N> of c2sp.org/tlog-tiles: zero-padded 3-digit path elements, all but the
    last starting with `x` (1234067 -> `x001/x234/067`, 5 -> `005`)."""
    if index < 0:
        raise ValueError(f"tile index {index} is negative")
    groups = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        groups.append(f"x{index % 1000:03d}")
        index //= 1000
    return "/".join(reversed(groups))


def tile_key(prefix: str, log_id: str, tile: TileName) -> str:
    return join(prefix, f"logs/{log_id}/{tile.path()}")


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
    # "bundle" | "checkpoint" | "claim" | "cosigned" | "latest" | "tile" | "unknown"
    kind: str
    bundle: BundleName | None = None
    tile: TileName | None = None
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
    if rest == "checkpoint":
        return ObjectName(log_id, "latest")
    if folder == "tile" and (tile := TileName.from_path(rest)) is not None:
        return ObjectName(log_id, "tile", tile=tile)
    if folder == "claims" and (m := _CLAIM_RE.fullmatch(name)):
        return ObjectName(log_id, "claim", size=int(m.group(1)), epoch=int(m.group(2) or 1))
    return ObjectName(log_id, "unknown")
