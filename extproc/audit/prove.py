"""Inclusion and consistency proofs built from a log's published objects.

Reads only what the auditor reads (bundles and signed checkpoints in the
store, through extproc.audit.reader, as `verify` reads them), so a proof can be
made by anyone with read access, offline from the writer. Proofs come from
extproc.core.merkle and are checked with its verify_* before they are
handed out.

Cost: a proof against a checkpoint of size n needs the leaf hashes of all n
entries (RFC 9162 proofs hash whole subtrees), so every bundle up to n is
read once: O(n) reading, 32 bytes of memory per entry. Bundles are streamed
one at a time; only their leaf hashes are kept, in a bounded LRU cache that
the live proof API shares between requests (published bundles never change,
so a cached leaf list never goes stale).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from extproc.audit.reader import Bundle, LogReader
from extproc.core import entry as entry_format
from extproc.core import layout, scan
from extproc.core.bundle import MAX_BUNDLE_BYTES, split_lines
from extproc.core.checkpoint import Checkpoint, open_checkpoint
from extproc.core.display import escape, quote
from extproc.core.fields import (
    AUTH,
    DST_MISMATCH,
    ID,
    KIND,
    PEER,
    REPORTER,
    REQUEST_KINDS,
    RID,
    TS,
)
from extproc.core.keyring import Keyring
from extproc.core.merkle import (
    LEAF_PREFIX,
    consistency_proof,
    inclusion_proof,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from extproc.core.note import Verifier, parse_note
from extproc.core.tlogproof import TlogProof
from extproc.errors import ConfigError, NotFoundError, ObjectNotFoundError, VerificationError
from extproc.store.base import ObjectStore

DEFAULT_CACHE_LEAVES = 1 << 20  # 32 MiB of leaf hashes

# A request id names the entries that carry a request (docs/PROOFS.md):
# REQUEST_KINDS. A `response` entry repeats its request's rid but is not the
# request, and `writer` entries have rid "".
MAX_LISTED_MATCHES = 20  # seqs named in an AmbiguousRequestIdError's message
_MAX_RID_SHOWN = 200  # characters of a request id quoted in a message
_TOKEN_RE = re.compile(r"[a-z]{1,32}")


class EntryNotFoundError(NotFoundError):
    """The asked-for entry, size or log is not (yet) published in the store."""


def _rid_text(rid: str) -> str:
    """A request id for a message: quoted and escaped, long ones cut."""
    if len(rid) > _MAX_RID_SHOWN:
        return f"{rid[:_MAX_RID_SHOWN]!r}... ({len(rid)} characters)"
    return repr(rid)


@dataclass(frozen=True)
class EntryReporter:
    """Who reported an entry: its top-level `reporter` object, as the writer
    records it (extproc.trust.reporter).

    `auth` is how the reporter was identified (`mtls`, `xfcc`, `unix`,
    `unauthenticated`; "?" if the entry's value is not an object with a
    string `auth`), `id` its identity (None when unauthenticated), `peer` its
    transport address, `dst_mismatch` the writer's mark for a reporter that
    is not the proxy of the workload that served the request. Values are as
    stored: print them with `describe()`.
    """

    auth: str
    id: str | None
    peer: str | None
    dst_mismatch: bool = False

    @classmethod
    def from_entry(cls, fields: dict[str, Any]) -> EntryReporter | None:
        """The entry's reporter; None for entries written before reporters were recorded."""
        value = fields.get(REPORTER)
        if value is None:
            return None
        if not isinstance(value, dict):
            return cls("?", None, None)
        auth, rid, peer = value.get(AUTH), value.get(ID), value.get(PEER)
        return cls(
            auth if isinstance(auth, str) else "?",
            rid if isinstance(rid, str) else None,
            peer if isinstance(peer, str) else None,
            value.get(DST_MISMATCH) is True,
        )

    def describe(self) -> str:
        """One line, safe for a terminal: `mtls id="..." peer="..." [dst_mismatch]`."""
        auth = self.auth if _TOKEN_RE.fullmatch(self.auth) else quote(self.auth)
        parts = [auth]
        if self.id is not None:
            parts.append(f"id={quote(self.id)}")
        if self.peer is not None:
            parts.append(f"peer={quote(self.peer)}")
        if self.dst_mismatch:
            parts.append("dst_mismatch")
        return " ".join(parts)


@dataclass(frozen=True)
class RequestMatch:
    """A published entry that carries a request (kind in REQUEST_KINDS) with
    the asked-for request id."""

    seq: int
    entry: bytes  # the stored line
    kind: str
    ts: str
    reporter: EntryReporter | None  # None: the entry has no `reporter`

    def describe(self, log_id: str) -> str:
        """One line, safe for a terminal: log id, seq, kind, ts and reporter."""
        reporter = self.reporter.describe() if self.reporter is not None else "-"
        return (
            f"log {escape(log_id)} seq {self.seq} kind {escape(self.kind)} "
            f"ts {escape(self.ts)} reporter {reporter}"
        )


class AmbiguousRequestIdError(ConfigError):
    """Several entries carry the asked-for request id: none is picked.

    Request ids come from clients (`x-request-id`), so any client can send one
    that another request already used; proving "the" entry with that id would
    let a later forged entry win. `matches` holds the first
    MAX_LISTED_MATCHES of them (seq order), `total` counts all.
    """

    def __init__(
        self, log_id: str, request_id: str, matches: Sequence[RequestMatch], total: int
    ) -> None:
        self.log_id = log_id
        self.request_id = request_id
        self.matches = tuple(matches)
        self.total = total
        listed = self.matches[:MAX_LISTED_MATCHES]
        seqs = ", ".join(str(m.seq) for m in listed)
        more = f" and {total - len(listed)} more" if total > len(listed) else ""
        super().__init__(
            f"log {log_id}: {total} entries carry request id {_rid_text(request_id)} "
            f"(seqs {seqs}{more}); name one by its seq"
        )


@dataclass(frozen=True)
class Inclusion:
    """Entry `index` with its inclusion proof under `checkpoint` (signed note `note`)."""

    log_id: str
    index: int
    entry: bytes
    hashes: tuple[bytes, ...]
    checkpoint: Checkpoint
    note: bytes

    def to_proof(self) -> TlogProof:
        return TlogProof(self.index, self.hashes, self.note, self.entry)


@dataclass(frozen=True)
class Consistency:
    log_id: str
    first: int
    second: int
    hashes: tuple[bytes, ...]
    first_note: bytes | None  # signed checkpoints at those sizes, where published
    second_note: bytes | None


@dataclass
class _LogObjects:
    reader: LogReader  # the log as `verify` reads it (original versions on S3)
    checkpoints: list[int]  # sizes, ascending
    bundles: list[Bundle]  # the log's, contiguous from seq 0 (LogReader.bundles_in_effect)


class LeafCache:
    """LRU of per-bundle leaf hashes, bounded by the total number of leaves."""

    def __init__(self, max_leaves: int = DEFAULT_CACHE_LEAVES) -> None:
        self.max_leaves = max_leaves
        self._items: OrderedDict[str, list[bytes]] = OrderedDict()
        self._leaves = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> list[bytes] | None:
        with self._lock:
            leaves = self._items.get(key)
            if leaves is not None:
                self._items.move_to_end(key)
            return leaves

    def put(self, key: str, leaves: list[bytes]) -> None:
        if len(leaves) > self.max_leaves:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = leaves
            self._leaves += len(leaves)
            while self._leaves > self.max_leaves:
                _, old = self._items.popitem(last=False)
                self._leaves -= len(old)


class Prover:
    """Proofs for one log id in one store.

    `verifier`: checkpoints that do not verify under it are skipped. Without
    one (`prove` without --vkey) checkpoints are only parsed; the proof still
    recomputes the root from the entries, and check-proof verifies the
    signature.
    """

    def __init__(
        self,
        store: ObjectStore,
        log_id: str,
        verifier: Keyring | Verifier | None = None,
        cache: LeafCache | None = None,
        max_bundle_bytes: int = MAX_BUNDLE_BYTES,
    ) -> None:
        self.store = store
        self.max_bundle_bytes = max_bundle_bytes
        self.log_id = layout.validate_log_id(log_id)
        if isinstance(verifier, Keyring):
            self.keyring: Keyring | None = verifier
        else:
            self.keyring = Keyring.of(verifier) if verifier is not None else None
        self.cache = cache if cache is not None else LeafCache()

    # --- objects --------------------------------------------------------------------

    def _objects(self) -> _LogObjects:
        reader = LogReader.open(self.store, self.log_id, max_bundle_bytes=self.max_bundle_bytes)
        listed = reader.objects
        if not (listed.checkpoints or listed.bundles):
            raise EntryNotFoundError(f"log {self.log_id} not found in {self.store.url}")
        return _LogObjects(
            reader,
            sorted(size for _, size in listed.checkpoints),
            reader.bundles_in_effect(self.keyring),
        )

    def _bundle_lines(self, objects: _LogObjects, key: str, name: layout.BundleName) -> list[bytes]:
        lines = split_lines(objects.reader.bundle_data(key, name))
        if len(lines) != name.last - name.first + 1:
            raise VerificationError(f"{key}: bundle holds {len(lines)} entries, its name disagrees")
        return lines

    def _bundle_leaves(
        self, objects: _LogObjects, key: str, name: layout.BundleName
    ) -> list[bytes]:
        leaves = self.cache.get(key)
        if leaves is None:
            sha256 = hashlib.sha256
            lines = self._bundle_lines(objects, key, name)
            leaves = [sha256(LEAF_PREFIX + line).digest() for line in lines]
            self.cache.put(key, leaves)
        return leaves

    def _leaves(self, objects: _LogObjects, size: int) -> list[bytes]:
        """Leaf hashes of entries [0, size), streamed bundle by bundle."""
        leaves: list[bytes] = []
        for key, name in objects.bundles:  # contiguous: each starts at len(leaves)
            if len(leaves) >= size:
                break
            leaves.extend(self._bundle_leaves(objects, key, name))
        if len(leaves) < size:
            raise VerificationError(
                f"log {self.log_id}: checkpoint size {size} but only {len(leaves)} entries "
                "published (run verify)"
            )
        return leaves[:size]

    def _open(self, objects: _LogObjects, size: int) -> tuple[Checkpoint, bytes] | None:
        """The checkpoint at `size` if it is usable: verifies (or parses) and names its size."""
        key = layout.checkpoint_key(self.store.prefix, self.log_id, size)
        try:
            note = objects.reader.read_checkpoint(key)
        except (ObjectNotFoundError, VerificationError):  # gone, over its bound, not a file
            return None
        try:
            if self.keyring is not None:
                cp = open_checkpoint(note, self.keyring)
            else:
                cp = Checkpoint.from_text(parse_note(note)[0])
        except VerificationError:
            return None
        if cp.size != size or not cp.origin.endswith(f"/{self.log_id}"):
            return None
        return cp, _cosigned(objects.reader, size, note) or note

    def _checkpoint(
        self, objects: _LogObjects, at_least: int, tree_size: int | None
    ) -> tuple[Checkpoint, bytes]:
        if tree_size is not None:
            found = self._open(objects, tree_size) if tree_size in objects.checkpoints else None
            if found is None:
                raise EntryNotFoundError(
                    f"log {self.log_id}: no valid signed checkpoint of size {tree_size}"
                )
            if tree_size < at_least:
                raise EntryNotFoundError(
                    f"log {self.log_id}: checkpoint size {tree_size} does not cover entry "
                    f"{at_least - 1}"
                )
            return found
        tried = []
        for size in reversed(objects.checkpoints):
            if size < at_least:
                break
            if (found := self._open(objects, size)) is not None:
                return found
            tried.append(size)
        what = f"covers entry {at_least - 1}" if at_least else "is published"
        if self.keyring is not None and any(self._parses(objects, size) for size in tried[:8]):
            raise EntryNotFoundError(
                f"log {self.log_id}: no checkpoint that {what} is signed by the given key(s) "
                f"({self.keyring.describe()}): wrong --vkey or --keyring?"
            )
        raise EntryNotFoundError(f"log {self.log_id}: no valid signed checkpoint {what} yet")

    def _parses(self, objects: _LogObjects, size: int) -> bool:
        """The checkpoint at `size` reads as one of this log, whoever signed it."""
        key = layout.checkpoint_key(self.store.prefix, self.log_id, size)
        try:
            cp = Checkpoint.from_text(parse_note(objects.reader.read_checkpoint(key))[0])
        except (ObjectNotFoundError, VerificationError):
            return False
        return cp.size == size and cp.origin.endswith(f"/{self.log_id}")

    # --- finding an entry -------------------------------------------------------------

    def _entry_by_seq(self, objects: _LogObjects, seq: int) -> bytes:
        for key, name in objects.bundles:
            if name.first <= seq <= name.last:
                return self._bundle_lines(objects, key, name)[seq - name.first]
        raise EntryNotFoundError(f"log {self.log_id}: entry {seq} is not published")

    def _scan_request_id(
        self, objects: _LogObjects, rid: str, keep: int | None
    ) -> tuple[list[RequestMatch], int]:
        """Entries of kind REQUEST_KINDS with this `rid`, in seq order: the
        first `keep` of them (all if None) and how many there are.

        Every published bundle is read: a request id is not unique (clients
        choose it), so one match says nothing about the rest of the log. The
        proof that follows needs every leaf up to its checkpoint anyway, so
        the leaf hashes of the bundles read go to the cache on the way.
        """
        if not rid:
            raise ConfigError(
                'empty request id: entries without one have rid ""; name the entry by seq'
            )
        # The substring test only skips lines (core/scan.py), the parse decides.
        needle = (scan.member(RID, rid),)
        sha256 = hashlib.sha256
        kept: list[RequestMatch] = []
        total = 0
        for key, name in objects.bundles:
            lines = self._bundle_lines(objects, key, name)
            if self.cache.get(key) is None:
                self.cache.put(key, [sha256(LEAF_PREFIX + line).digest() for line in lines])
            for i, line in scan.lines_holding(lines, needle):
                fields = entry_format.parse(line)
                kind = fields.get(KIND)
                if fields.get(RID) != rid or kind not in REQUEST_KINDS:
                    continue
                total += 1
                if keep is None or len(kept) < keep:
                    ts = fields.get(TS)
                    kept.append(
                        RequestMatch(
                            name.first + i,
                            line,
                            str(kind),
                            ts if isinstance(ts, str) else "",
                            EntryReporter.from_entry(fields),
                        )
                    )
        if not total:
            raise EntryNotFoundError(
                f"log {self.log_id}: no published entry has request id {_rid_text(rid)}"
            )
        return kept, total

    def matches_by_request_id(self, request_id: str) -> list[RequestMatch]:
        """Every published entry that carries a request (kind `request` or
        `exchange`) with this request id, in seq order; at least one.

        Raises EntryNotFoundError if there is none. Reads every bundle; holds
        the matching entries' bytes.
        """
        return self._scan_request_id(self._objects(), request_id, None)[0]

    # --- proofs -----------------------------------------------------------------------

    def latest_checkpoint(self) -> tuple[Checkpoint, bytes]:
        """The newest valid signed checkpoint (checkpoint, signed note bytes)."""
        return self._checkpoint(self._objects(), 0, None)

    def inclusion(
        self,
        *,
        seq: int | None = None,
        request_id: str | None = None,
        tree_size: int | None = None,
    ) -> Inclusion:
        """Entry `seq` (or the entry with `request_id`) proven under the newest
        valid checkpoint covering it, or the one of `tree_size`.

        By request id, the entry must be the only published entry of kind
        `request` or `exchange` with that id: if several are, none is picked
        and AmbiguousRequestIdError names them (matches_by_request_id lists
        them all).
        """
        if (seq is None) == (request_id is None):
            raise ConfigError("name the entry by seq or by request id (one of them)")
        objects = self._objects()
        if request_id is not None:
            matches, total = self._scan_request_id(objects, request_id, MAX_LISTED_MATCHES)
            if total > 1:
                raise AmbiguousRequestIdError(self.log_id, request_id, matches, total)
            seq, data = matches[0].seq, matches[0].entry
        else:
            assert seq is not None
            if seq < 0:
                raise ConfigError("seq must not be negative")
            data = self._entry_by_seq(objects, seq)
        cp, note = self._checkpoint(objects, seq + 1, tree_size)
        leaves = self._leaves(objects, cp.size)
        if root_of(leaves) != cp.root_hash:
            raise VerificationError(
                f"log {self.log_id}: published entries do not match the signed root of "
                f"size {cp.size} (run verify)"
            )
        hashes = tuple(inclusion_proof(leaves, seq))
        # The entry we return must be the leaf we prove.
        verify_inclusion(
            hashlib.sha256(LEAF_PREFIX + data).digest(), seq, cp.size, hashes, cp.root_hash
        )
        return Inclusion(self.log_id, seq, data, hashes, cp, note)

    def consistency(self, first: int, second: int | None = None) -> Consistency:
        """Proof that the tree of size `first` is a prefix of the tree of size
        `second` (default: the newest valid checkpoint's size)."""
        objects = self._objects()
        latest = self._checkpoint(objects, 0, None)[0]
        if second is None:
            second = latest.size
        if not 0 <= first <= second:
            raise ConfigError(f"need 0 <= first <= second, got {first} and {second}")
        if second > latest.size:
            raise EntryNotFoundError(
                f"log {self.log_id}: tree size {second} is not published yet "
                f"(newest signed size {latest.size})"
            )
        leaves = self._leaves(objects, latest.size)
        if root_of(leaves) != latest.root_hash:
            raise VerificationError(
                f"log {self.log_id}: published entries do not match the signed root of "
                f"size {latest.size} (run verify)"
            )
        leaves = leaves[:second]
        hashes = tuple(consistency_proof(leaves, first))
        verify_consistency(first, second, root_of(leaves[:first]), root_of(leaves), hashes)
        first_cp = self._open(objects, first) if first in objects.checkpoints else None
        second_cp = self._open(objects, second) if second in objects.checkpoints else None
        return Consistency(
            self.log_id,
            first,
            second,
            hashes,
            first_cp[1] if first_cp else None,
            second_cp[1] if second_cp else None,
        )


def _cosigned(reader: LogReader, size: int, note: bytes) -> bytes | None:
    """The checkpoint note with the witnesses' cosignatures (`cosigned/<size>`), if
    published and it is `note` with signature lines added: what check-proof
    --witness needs. None otherwise (the proof then carries the plain note)."""
    key = layout.cosigned_key(reader.store.prefix, reader.log_id, size)
    if key not in {k for k, _ in reader.objects.cosigned}:
        return None
    try:
        cosigned = reader.read_checkpoint(key)
    except (ObjectNotFoundError, VerificationError):
        return None
    return cosigned if cosigned.startswith(note) else None
