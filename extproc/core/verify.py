"""Verification of one log from its objects: pure logic, no I/O, no clock.

The store reader (extproc/audit/reader.py) lists and fetches objects and
feeds them here, for `verify`, `search` and the writer's self-audit alike;
LogChecker decides what is wrong. Tampering never raises: it becomes a
Finding (core/findings.py) that names the log, the object and what is
wrong, so one run reports every problem it can see.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from extproc.core import entry, scan
from extproc.core.bundle import split_lines
from extproc.core.checkpoint import Checkpoint
from extproc.core.claim import Claim, claim_in_effect
from extproc.core.cosignature import WitnessPolicy
from extproc.core.display import escape
from extproc.core.fields import (
    AUTH,
    AUTH_NONE,
    CONFLICT,
    COUNT,
    EPOCH,
    EVENT,
    EVENT_FOREIGN,
    EVENT_ROTATE,
    KIND,
    KIND_WRITER,
    NEW_KEY,
    OBJECT,
    OBJECTS,
    OLD_KEY,
    PREV,
    REF,
    REPORTER,
    SEQ,
    TS,
)
from extproc.core.findings import ERROR, WARNING, Finding, LogReport
from extproc.core.keyring import Keyring, SignedBy, TrustedKey, clock
from extproc.core.layout import BundleName
from extproc.core.merkle import (
    LEAF_PREFIX,
    CompactRange,
    compact_range_nodes,
    consistency_ranges,
    verify_consistency,
)
from extproc.core.note import Verifier, parse_note
from extproc.core.witnessed import WitnessedLog
from extproc.errors import VerificationError

_CLAIM_NAME_RE = re.compile(r"[0-9]{20}(?:\.e([0-9]+))?$")
# The writer's own records of foreign objects and key changes (docs/FORMAT.md);
# found with one search per bundle, then confirmed by a full parse.
_OWN_RECORDS = (scan.member(EVENT, EVENT_FOREIGN), scan.member(EVENT, EVENT_ROTATE))
# Entries from unauthenticated reporters and outcomes in conflict (docs/FORMAT.md):
# found the same way, counted and reported after a parse of the lines that hold them.
_REPORTER_MARKS = (scan.member(AUTH, AUTH_NONE), scan.key(CONFLICT))
# Foreign objects reported one by one per log; the rest in one summary finding
# (whoever can write the bucket chooses how many there are).
MAX_FOREIGN_FINDINGS = 100
_NEVER = 1 << 62  # an epoch no writer reaches
# What a record keeps of the writer's `foreign` and `rotate` entries (LogReport.records).
_RECORDED = (SEQ, EVENT, OBJECT, OBJECTS, COUNT, EPOCH, OLD_KEY, NEW_KEY, TS)


def note_signer_label(data: bytes) -> str:
    """`name+keyid` of the first signature on a signed note ("" if unreadable)."""
    try:
        _, signatures = parse_note(data)
    except VerificationError:
        return ""
    return f"{signatures[0].name}+{signatures[0].key_id.hex()}" if signatures else ""


def _claim_signer_label(claim: Claim) -> str:
    return f"{claim.key_name}+{claim.signature[:4].hex()}" if len(claim.signature) > 4 else ""


def _entries_holding(
    data: bytes, lines: list[bytes], first: int, needles: tuple[bytes, ...]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(seq, fields) of each line that holds one of `needles` (core/scan.py) and
    parses as an entry (one that does not is reported by the chain checks)."""
    for offset, line in scan.lines_holding(lines, needles, data):
        try:
            yield first + offset, entry.parse(line)
        except VerificationError:
            continue


class LogChecker:
    """Checks one log. Call add_checkpoint and add_claim for every checkpoint
    and claim first, then add_bundle for every bundle in order of first seq,
    then finish()."""

    def __init__(
        self,
        log_id: str,
        keyring: Keyring | Verifier,
        origin_prefix: str | None = None,
        *,
        deep: bool = False,
        now_ms: int | None = None,
        witnesses: WitnessPolicy | None = None,
    ) -> None:
        self.log_id = log_id
        self.deep = deep  # parse every entry as JSON, not only where the quick check fails
        self.now_ms = now_ms  # the auditor's clock: evidence of when keys signed
        self.keyring = keyring if isinstance(keyring, Keyring) else Keyring.of(keyring)
        self.origin_prefix = origin_prefix
        self.report = LogReport(log_id)
        # Witness cosignatures (core/witnessed.py); the signer of each checkpoint
        # read (object key ->) and of each of the log's (tree size -> key, cp, signer).
        self._witnessed = WitnessedLog(witnesses)
        self._signed: dict[str, TrustedKey] = {}
        self._accepted: dict[int, tuple[str, Checkpoint, TrustedKey]] = {}
        self._checkpoints: dict[int, tuple[str, Checkpoint]] = {}
        # Valid signed checkpoints as read (key, checkpoint, signer, note) and claims
        # by first seq (epoch, key, claim, trusted, signer): which are the log's is
        # settled once, before the first bundle (_settle).
        # (key, checkpoint, signer, note, why a retired signer lacks outside time or None)
        self._read_checkpoints: list[tuple[str, Checkpoint, str, str, str | None]] = []
        self._candidates: dict[int, list[tuple[int, str, Claim, bool, str]]] = {}
        self._claims: dict[int, tuple[str, Claim]] = {}
        self._settled = False
        self._used_claims: set[int] = set()
        self._trusted_claims = 0
        # Objects at the log's keys that its writer did not write: key -> why; the
        # signer they name (an untrusted key), and foreign checkpoints' sizes.
        self._foreign: dict[str, str] = {}
        self._foreign_signers: dict[str, str] = {}
        self._foreign_sizes: dict[str, int] = {}
        self._explained: dict[str, int] = {}  # relative key -> seq of the entry naming it
        self._counted: list[tuple[int, int]] = []  # (seq, count) of the writer's summaries
        # A second history: a trusted key that began the log again (_restarted_keys).
        # signer -> its objects, the bundle ranges its claims name, its latest note.
        self._second: dict[str, list[str]] = {}
        self._second_keys: set[str] = set()
        self._second_ranges: dict[tuple[int, int], str] = {}
        self._second_notes: dict[str, tuple[int, str]] = {}
        self._tree = CompactRange()
        self._prev = ""
        self._gap = False
        self._base = 0  # entries below this were verified by an earlier run
        self._base_root = b""
        self._base_nodes: dict[tuple[int, int], bytes] = {}
        # Consistency proof base -> latest: the new-side subtrees, filled as
        # bundles stream by (None until the first bundle after a resume).
        self._proof_ranges: list[tuple[int, int]] | None = None
        self._proof_parts: dict[tuple[int, int], CompactRange] = {}
        self._roots_ok: set[int] = set()
        # Checkpoints by retired keys with no outside time (size -> key, problem):
        # trusted at finish() if a trusted checkpoint at least as large vouches.
        self._unvouched: dict[int, tuple[str, str]] = {}
        # tree size -> (frontier, last leaf hex) at each checkpoint whose root matched
        self._verified: dict[int, tuple[CompactRange, str]] = {0: (CompactRange(), "")}

    def resume(self, tree: CompactRange, last_leaf: str) -> None:
        """Start from a tree an earlier run verified (the state file's frontier).

        Call before anything else. Bundles wholly below `tree.size` are then
        counted but not read; checkpoints below it are checked for signature
        and origin only (their roots were checked by that earlier run).
        """
        self._tree = tree.copy()
        self._prev = last_leaf
        self._base = tree.size
        self._base_root = tree.root()
        self._base_nodes = compact_range_nodes(tree)
        self.report.entries = tree.size
        self.report.resumed_from = tree.size
        self._verified = {tree.size: (tree.copy(), last_leaf)}

    def _find(
        self, key: str, message: str, severity: str = ERROR, evidence: tuple[str, ...] = ()
    ) -> None:
        self.report.findings.append(Finding(self.log_id, key, message, severity, evidence))

    def add_unknown(self, key: str) -> None:
        """An object under the log's prefix whose name is not in the layout."""
        self._foreign_object(key, "object is not part of the log layout")

    def add_foreign(self, key: str, why: str) -> None:
        """An object a reader refused to read (over its bound, not a regular file)."""
        self._foreign_object(key, why)

    def add_gone(self, key: str) -> None:
        """An object that was listed, then could not be found when read."""
        self._find(key, "object listed, then gone before it could be read (deleted)")

    def is_foreign(self, key: str) -> bool:
        """Is `key` not the log's (a foreign object, or a second history's)? Known
        once every object was added: what is not the log's is not held to its
        rules (retention), only reported."""
        return key in self._foreign or key in self._second_keys

    def add_retention_missing(self, key: str) -> None:
        self._find(key, "object has no Object Lock retention")

    def _foreign_object(self, key: str, why: str, signer: str = "") -> None:
        self._foreign.setdefault(key, why)
        if signer:
            self._foreign_signers.setdefault(key, signer)

    def _names_this_log(self, origin: str) -> bool:
        if self.origin_prefix is not None:
            return origin == f"{self.origin_prefix.rstrip('/')}/{self.log_id}"
        return origin.endswith(f"/{self.log_id}")

    def add_checkpoint(
        self, key: str, size: int, data: bytes, written_ms: int | None = None
    ) -> None:
        """`written_ms`: when the store says the object was written, if it knows."""
        try:
            note = data.decode("utf-8", "replace")
            text, signer = self.keyring.verify_note(data)
            cp = Checkpoint.from_text(text)
        except VerificationError as e:
            self._foreign_object(key, f"checkpoint does not verify: {e}", note_signer_label(data))
            self._foreign_sizes[key] = size
            return
        if not signer.covers(self.log_id):
            self._find(key, f"checkpoint signed by key {signer.label}, not trusted for this log")
            return
        # The store's write time is S3's, not the signer's (a versioned store only).
        outside = clock(self.now_ms)
        if written_ms is not None:
            outside.append(SignedBy(written_ms, "the store's write time"))
        if problem := signer.signed_outside_window(cp.timestamp_ms, outside):
            self._find(key, f"checkpoint {problem} (a retired key must not sign)")
            return
        expected = f"/{self.log_id}"
        if self.origin_prefix is not None:
            if cp.origin != f"{self.origin_prefix.rstrip('/')}/{self.log_id}":
                self._find(key, f"checkpoint origin {cp.origin!r} is not this log's")
                return
        elif not cp.origin.endswith(expected):
            self._find(key, f"checkpoint origin {cp.origin!r} does not name log {self.log_id}")
            return
        if cp.size != size:
            self._find(key, f"checkpoint says tree size {cp.size}, its name says {size}")
            return
        self._signed[key] = signer
        self._read_checkpoints.append(
            (key, cp, signer.label, note, signer.retired_without_evidence(outside))
        )

    def add_cosigned(self, key: str, size: int, data: bytes) -> None:
        """A `cosigned/<size>` object: the checkpoint with witness cosignatures."""
        why, forged = self._witnessed.add(key, size, data, self.keyring)
        if forged:
            self._find(key, why)
        elif why:
            self._foreign_object(key, why, note_signer_label(data))

    def _accept_checkpoint(
        self, key: str, cp: Checkpoint, signer: str, note: str, unvouched: str | None
    ) -> None:
        report = self.report
        self._accepted[cp.size] = (key, cp, self._signed[key])
        if signer not in report.keys:
            report.keys.append(signer)
        report.epoch = max(report.epoch, cp.epoch)
        if unvouched:
            self._unvouched[cp.size] = (key, unvouched)
        report.checkpoints += 1
        report.valid.append(cp)
        if report.latest is None or cp.size > report.latest.size:
            report.latest = cp
            report.latest_note = note
        if cp.size >= self._base:  # below: its root was checked with the entries below the base
            self._checkpoints[cp.size] = (key, cp)

    def add_claim(self, key: str, first: int, data: bytes, epoch: int | None = None) -> None:
        """`epoch`: from the claim's key (`claims/<first>.e<n>`), parsed from it if None."""
        if epoch is None:
            m = _CLAIM_NAME_RE.search(key)
            epoch = int(m.group(1)) if m and m.group(1) else 1
        if first < self._base:
            return
        try:
            claim = Claim.from_bytes(data)
        except VerificationError as e:
            self._foreign_object(key, f"claim is malformed: {e}")
            return
        signed = claim.signed
        if signed:
            try:
                signer = claim.verify(self.keyring)
            except VerificationError as e:
                self._foreign_object(key, f"claim does not verify: {e}", _claim_signer_label(claim))
                return
            if not signer.covers(self.log_id) or not self._names_this_log(claim.origin):
                self._find(key, f"claim by key {signer.label} for {claim.origin!r}: not this log's")
                return
            if claim.epoch != epoch:
                self._find(key, f"claim says epoch {claim.epoch}, its name says {epoch}")
                return
        elif epoch != 1:
            # Claims of later epochs are always signed; an unsigned one was planted.
            self._foreign_object(key, "claim of a later epoch without a signature")
            return
        if claim.first != first:
            self._find(
                key, f"claim names a bundle starting at {claim.first}, its name says {first}"
            )
            return
        label = signer.label if signed else ""
        self._candidates.setdefault(first, []).append((epoch, key, claim, signed, label))
        self._trusted_claims += signed

    def _restarted_keys(self) -> dict[str, int]:
        """Trusted keys that began the log again: signer -> the first epoch of theirs
        to claim a position that a checkpoint of an earlier epoch already covers.

        The writer never claims below a size it has signed (it moves to a new epoch
        only ahead of its published size), so such a claim starts a second history:
        a writer under that key started the log id again without its WAL. Its
        objects from that epoch on are not the log's (they would replace what the
        first writer published)."""
        covered: dict[int, int] = {}  # epoch -> the largest checkpoint of that epoch
        for _, cp, *_ in self._read_checkpoints:
            covered[cp.epoch] = max(covered.get(cp.epoch, 0), cp.size)
        epochs = sorted(covered)
        below = list(itertools.accumulate((covered[e] for e in epochs), max))
        restarted: dict[str, int] = {}
        for first, candidates in self._candidates.items():
            for epoch, _, _, trusted, signer in candidates:
                earlier = bisect.bisect_left(epochs, epoch)  # epochs[:earlier] < epoch
                if trusted and earlier and below[earlier - 1] > first:
                    restarted[signer] = min(restarted.get(signer, epoch), epoch)
        return restarted

    def _set_apart(self, signer: str, key: str) -> None:
        self._second.setdefault(signer, []).append(key)
        self._second_keys.add(key)

    def _settle(self) -> None:
        """Which checkpoints and claims are the log's: everything but a second
        history (_restarted_keys); then the claim in effect at each position
        (claim_in_effect); the other claims there are superseded claims of the
        writer's or foreign objects."""
        if self._settled:
            return
        self._settled = True
        restarted = self._restarted_keys()
        for key, cp, signer, note, unvouched in self._read_checkpoints:
            if cp.epoch >= restarted.get(signer, _NEVER):
                self._set_apart(signer, key)
                if cp.size >= self._second_notes.get(signer, (-1, ""))[0]:
                    self._second_notes[signer] = (cp.size, note)
            else:
                self._accept_checkpoint(key, cp, signer, note, unvouched)
        for first, listed in self._candidates.items():
            candidates = []
            for epoch, key, claim, trusted, signer in listed:
                if trusted and epoch >= restarted.get(signer, _NEVER):
                    self._set_apart(signer, key)
                    self._second_ranges[(claim.first, claim.last)] = signer
                else:
                    candidates.append((epoch, key, claim, trusted))
            for epoch, *_ in candidates:
                self.report.epoch = max(self.report.epoch, epoch)
            chosen = claim_in_effect((e, c, trusted) for e, _, c, trusted in candidates)
            if chosen is None:
                continue
            epoch, claim = chosen
            for other_epoch, other_key, other, signed in candidates:
                if other is claim:
                    self._claims[first] = (other_key, claim)
                elif signed:
                    self._find(
                        other_key,
                        f"claim of epoch {other_epoch} superseded by epoch {epoch} "
                        "(the writer met a foreign object here and moved on)",
                        WARNING,
                    )
                else:
                    self._foreign_object(other_key, "unsigned claim where a signed one exists")
        if self._base in self._checkpoints:
            self._check_root(self._base)

    def _check_claim(self, key: str, name: BundleName, last_leaf: bytes) -> None:
        self._used_claims.add(name.first)
        claim_key, claim = self._claims.get(name.first, ("", None))
        if claim is not None and not claim.matches(name.first, name.last, last_leaf):
            self._find(
                key,
                f"bundle contradicts its claim {claim_key} (writer {claim.writer or '?'}): "
                "two writers on one log id",
            )

    def claimed_here(self, name: BundleName) -> bool:
        """True if the claim in effect at the bundle's first seq names exactly this
        range. Otherwise the bundle is not the log's: the writer claims every
        bundle before writing it."""
        self._settle()
        claimed = self._claims.get(name.first)
        return claimed is not None and (claimed[1].first, claimed[1].last) == (
            name.first,
            name.last,
        )

    def claim_matches(self, name: BundleName, lines_data: bytes) -> bool:
        """Does the claim in effect at the bundle's position describe these lines
        (its range, and the leaf hash of the last one)?"""
        lines = split_lines(lines_data)
        claimed = self._claims.get(name.first) if self.claimed_here(name) else None
        if claimed is None or not lines:
            return False
        last = hashlib.sha256(LEAF_PREFIX + lines[-1]).digest()
        return claimed[1].matches(name.first, name.last, last)

    def add_bundle(self, key: str, name: BundleName, lines_data: bytes) -> bool:
        """`lines_data`: the bundle's newline-terminated lines (decompressed).

        Returns False if the bundle is not part of the log (not the one its
        position's claim names): it is reported, and none of its lines count
        (a reader need not read it: pass b"").
        """
        report = self.report
        if name.last >= self._base and not self.claimed_here(name):
            second = self._second_ranges.get((name.first, name.last))
            if second is not None:
                self._set_apart(second, key)
                return False
            claimed = self._claims.get(name.first)
            self._foreign_object(
                key,
                f"bundle is not the one claimed at {name.first} ({claimed[1].bundle})"
                if claimed is not None
                else "bundle has no claim",
            )
            return False
        report.bundles += 1
        if name.last < self._base:
            return True  # verified by an earlier run
        if self._gap:
            self._used_claims.add(name.first)
            return True
        if name.first < report.entries:
            self._find(key, f"bundle overlaps entries already read (log is at {report.entries})")
            return True
        if name.first > report.entries:
            self._find(
                "", f"entries {report.entries}..{name.first - 1} are missing (no bundle holds them)"
            )
            self._gap = True
            return True
        if not lines_data.endswith(b"\n"):
            self._find(key, "bundle does not end with a newline")
        lines = split_lines(lines_data)
        expected_count = name.last - name.first + 1
        if len(lines) != expected_count:
            self._find(key, f"bundle holds {len(lines)} entries, its name says {expected_count}")
        first = report.entries
        sha256 = hashlib.sha256
        leaves = [sha256(LEAF_PREFIX + line).digest() for line in lines]
        self._check_claim(key, name, leaves[-1] if leaves else b"")
        if self.deep:
            suspects: Iterable[int] = range(len(lines))
        else:
            suspects = scan.chain_mismatches(lines, first, self._prev.encode(), leaves)
        for offset in suspects:
            prev = leaves[offset - 1].hex() if offset else self._prev
            self._check_entry(key, lines[offset], first + offset, prev)
        self._read_own_records(lines_data, lines, first)
        self._read_reporter_marks(key, lines_data, lines, first)
        # Extend the tree up to each checkpoint inside this bundle, then check it.
        tree, done = self._tree, 0
        for size in sorted(s for s in self._checkpoints if first < s <= first + len(leaves)):
            tree.extend(leaves[done : size - first])
            done = size - first
            if self._check_root(size) and size == max(self._checkpoints):
                self._verified[size] = (tree.copy(), leaves[done - 1].hex())
        tree.extend(leaves[done:])
        if leaves:
            self._prev = leaves[-1].hex()
        report.entries = first + len(leaves)
        report.rehashed += len(leaves)
        self._collect_proof_leaves(first, leaves)
        return True

    def _read_own_records(self, data: bytes, lines: list[bytes], first: int) -> None:
        """The writer's `foreign` and `rotate` entries: what it saw and did, under its
        own signature (a client cannot forge one: it would not be a top-level `writer`
        entry)."""
        for seq, fields in _entries_holding(data, lines, first, _OWN_RECORDS):
            event = fields.get(EVENT)
            if fields.get(KIND) != KIND_WRITER or event not in (EVENT_FOREIGN, EVENT_ROTATE):
                continue
            record: dict[str, object] = {k: fields[k] for k in _RECORDED if k in fields}
            self.report.records.append(record)
            if isinstance(epoch := fields.get(EPOCH), int):
                self.report.epoch = max(self.report.epoch, epoch)
            if event != EVENT_FOREIGN:
                continue
            # One object (`object`), or a summary: a sample of names and a count.
            names = [fields.get(OBJECT)]
            if isinstance(sample := fields.get(OBJECTS), list):
                names += sample
            for name in names:
                if isinstance(name, str):
                    self._explained.setdefault(name, seq)
            count = fields.get(COUNT)
            if isinstance(count, int) and not isinstance(count, bool) and count > 0:
                self._counted.append((seq, count))

    def _read_reporter_marks(self, key: str, data: bytes, lines: list[bytes], first: int) -> None:
        """Count entries from unauthenticated reporters; warn of every outcome
        stored as a conflict, naming both outcomes and their request."""
        for seq, fields in _entries_holding(data, lines, first, _REPORTER_MARKS):
            reporter = fields.get(REPORTER)
            if isinstance(reporter, dict) and reporter.get(AUTH) == AUTH_NONE:
                self.report.unauthenticated += 1
            conflict, ref = fields.get(CONFLICT), fields.get(REF)
            if type(conflict) is int and type(ref) is int:
                self._find(
                    key,
                    f"entry {seq}: a second outcome of request entry {ref}, "
                    f"whose first outcome is entry {conflict}: the log cannot tell which "
                    "one happened (two streams under one identity, or a reused request id)",
                    WARNING,
                )

    def _explained_by(self, key: str) -> int | None:
        """The entry that names `key` (records name keys relative to the store prefix,
        `logs/<log id>/...`): one lookup per place where that part could begin."""
        at = key.find(f"logs/{self.log_id}/")
        while at >= 0:
            if at == 0 or key[at - 1] == "/":
                seq = self._explained.get(key[at:])
                if seq is not None:
                    return seq
            at = key.find(f"logs/{self.log_id}/", at + 1)
        return None

    def _collect_proof_leaves(self, first: int, leaves: list[bytes]) -> None:
        latest = self.report.latest
        if not self._base or latest is None or latest.size <= self._base:
            return
        if self._proof_ranges is None:
            self._proof_ranges = consistency_ranges(self._base, latest.size)
            self._proof_parts = {
                r: CompactRange() for r in self._proof_ranges if r[0] >= self._base
            }
        end = first + len(leaves)
        for (lo, hi), part in self._proof_parts.items():
            if lo < end and first < hi:
                part.extend(leaves[max(lo, first) - first : min(hi, end) - first])

    def _check_consistency(self) -> None:
        """Prove the latest checkpoint's tree extends the one verified earlier.

        Its root was recomputed by extending the verified frontier, which already
        shows the old tree is a prefix; the RFC 9162 proof built from the same
        data states it in the standard form, is checked with verify_consistency
        and goes into the report (`--format json`) as evidence.
        """
        latest = self.report.latest
        if self._proof_ranges is None or latest is None or latest.size not in self._roots_ok:
            return
        proof = []
        for lo, hi in self._proof_ranges:
            if hi <= self._base:
                proof.append(self._base_nodes[(lo, hi)])
                continue
            part = self._proof_parts[(lo, hi)]
            if part.size != hi - lo:
                return  # entries missing: reported elsewhere
            proof.append(part.root())
        try:
            verify_consistency(self._base, latest.size, self._base_root, latest.root_hash, proof)
        except VerificationError as e:
            self._find("", f"tree size {latest.size} is not consistent with size {self._base}: {e}")
            return
        self.report.consistency_proof = proof

    def _check_entry(self, key: str, line: bytes, seq: int, prev: str) -> None:
        """The full JSON parse of one entry, with findings that say what is wrong."""
        try:
            fields = entry.parse(line)
        except VerificationError as e:
            self._find(key, f"entry {seq}: {e}")
            return
        if fields[SEQ] != seq:
            self._find(key, f"entry {seq}: seq field says {fields[SEQ]}")
        if fields[PREV] != prev:
            self._find(key, f"entry {seq}: prev hash mismatch (hash chain broken)")

    def _check_root(self, size: int) -> bool:
        key, cp = self._checkpoints[size]
        if self._tree.root() == cp.root_hash:
            self._roots_ok.add(size)
            return True
        if self._base and size >= self._base:
            self._find(
                key,
                f"root hash does not match the entries (signed tree size {size}): "
                f"not consistent with the tree of size {self._base} verified earlier "
                "(entries changed, or a fork)",
            )
        else:
            self._find(
                key,
                f"root hash does not match the entries (signed tree size {size}): "
                "entries were changed, removed, reordered or inserted",
            )
        return False

    def _hides(self, key: str) -> bool:
        """Could this foreign object hide something the log claims? Only a foreign
        checkpoint where the log's own would cover entries read past its latest
        checkpoint (a replaced or planted-first checkpoint: the log looks
        shorter). Everything else foreign cannot change the log: its entries
        are what the trusted claims name and the trusted checkpoints sign."""
        size = self._foreign_sizes.get(key)
        latest = self.report.latest.size if self.report.latest is not None else 0
        return size is not None and latest < size <= self.report.entries

    def _report_foreign(self) -> None:
        """Foreign objects: warnings (an error only where one could hide something,
        `_hides`), one by one up to MAX_FOREIGN_FINDINGS, then one summary; and one
        line per untrusted key that signed some of them."""
        listed = 0
        unlisted: list[str] = []
        for key, why in sorted(self._foreign.items()):
            seq = self._explained_by(key)
            hides = self._hides(key)
            if not hides and listed >= MAX_FOREIGN_FINDINGS:
                unlisted.append(key)
                continue
            listed += 1
            if hides:
                self._find(
                    key,
                    f"{why}: foreign object where the log's checkpoint covering the entries "
                    "after its latest would be (it hides or replaced the log's own)",
                )
            elif seq is not None:
                self._find(
                    key,
                    f"{why}: foreign object, recorded by the writer in entry {seq}, "
                    "which went on without it",
                    WARNING,
                )
            else:
                counted = "".join(
                    f"; entry {at} counted {n} foreign objects the writer found"
                    for at, n in self._counted[:3]
                )
                self._find(
                    key,
                    f"{why}: foreign object (not written by this log's writer, and not "
                    f"named in its records{counted}): it cannot change the log",
                    WARNING,
                )
        if unlisted:
            self._find(
                "",
                f"{len(unlisted)} more foreign objects, not listed one by one "
                f"({unlisted[0]} .. {unlisted[-1]}): none can change the log",
                WARNING,
            )
        for signer, count in sorted(Counter(self._foreign_signers.values()).items()):
            self._find(
                "",
                f"{count} foreign objects signed by key {escape(signer)}, which is not trusted "
                "for this log: another writer under another key, or planted; they do not "
                "change the log (verify with that key too to see what it signed)",
                WARNING,
            )

    def _report_second_history(self) -> None:
        """A trusted key that began the log again (_restarted_keys): one error per key,
        with a checkpoint of each history as evidence. The log as first published
        is verified without it; but two trees signed for one origin by keys
        trusted for it are a fork, whoever made it."""
        ours = (self.report.latest_note,) if self.report.latest_note else ()
        for signer, keys in sorted(self._second.items()):
            theirs = self._second_notes.get(signer)
            self._find(
                "",
                f"a second history signed by key {signer} ({len(keys)} objects, from "
                f"{min(keys)}): it claims entries that checkpoints of an earlier epoch "
                "already cover, so a writer under this key began the log id again without "
                "its WAL. The log as first published verifies without it, but a key "
                "trusted for this log signed another tree for the same origin (a fork): "
                "verify with the first key alone to audit the log, and find out why "
                f"{signer} signed (docs/AUDITING.md)",
                ERROR,
                ours + ((theirs[1],) if theirs else ()),
            )

    def _check_vouched(self) -> None:
        """A retired key's checkpoint without outside time counts if its root matched
        the entries and a trusted checkpoint at least as large (or the state's
        tree) matched them too: it is then a prefix of a tree the auditor trusts. A
        quorum of witnesses that cosigned it while the key was valid vouches too."""
        for size in list(self._unvouched):
            if self._witnessed.in_window(*self._accepted[size][1:]):
                del self._unvouched[size]
        trusted = [s for s in self._roots_ok if s not in self._unvouched]
        largest = max([self._base, *trusted])
        for size, (key, problem) in sorted(self._unvouched.items()):
            if size < self._base or (size in self._roots_ok and size <= largest):
                continue
            self._find(key, f"checkpoint {problem}")

    def finish(self) -> LogReport:
        report = self.report
        self._settle()
        self._check_consistency()
        self._check_vouched()
        for key, message in self._witnessed.problems(report.latest, self._accepted):
            self._find(key, message)
        if self._foreign and not report.checkpoints and not self._trusted_claims:
            # Nothing verifies: the wrong key, not a bucket full of plants. One line.
            self._find(
                "",
                f"no valid signed checkpoint and no claim by a trusted key among "
                f"{len(self._foreign)} objects: wrong --vkey, or not this log's store "
                f"(trusted: {self.keyring.describe()})",
            )
            self._foreign.clear()
        self._report_foreign()
        self._report_second_history()
        for first, (key, claim) in sorted(self._claims.items()):
            if first in self._used_claims:
                continue
            if first >= report.entries and not self._gap:
                self._find(
                    key,
                    f"claim for entries {first}..{claim.last} whose bundle is not written "
                    "(writer stopped between claim and bundle)",
                    WARNING,
                )
            else:
                self._find(key, "claim whose bundle is missing or has another range")
        for size, (key, _) in sorted(self._checkpoints.items()):
            if size > report.entries:
                self._find(
                    key,
                    f"checkpoint covers {size} entries but only {report.entries} can be "
                    "read in order: entries are missing",
                )
        latest = report.latest
        if latest is not None:
            report.frontier = self._verified.get(latest.size)
        if latest is None:
            if report.entries or report.bundles:
                self._find("", "no valid signed checkpoint: nothing here can be trusted")
        elif report.entries > latest.size and not self._gap:
            self._find(
                "",
                f"entries {latest.size}..{report.entries - 1} are not covered by a signed "
                "checkpoint yet (writer crashed or still running)",
                WARNING,
            )
        return report
