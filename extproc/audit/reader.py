"""Reading a published log: the one store reader of every command that reads one.

`verify` (audit/verify.py), `search` (audit/search.py), `prove`
(audit/prove.py), the live proof API, the writer's self-audit and reconcile,
the demo, the tests and the scripts read a store through here:

- `list_logs`: a store's objects grouped by log. On a versioned store (S3;
  Object Lock needs versioning) keys are listed from their versions: an
  overwrite or a delete leaves the original version in place, so every key
  with more than one version or a delete marker is a finding, and the
  original (oldest) version is what gets read.
- `LogReader`: one log's objects, read as the log wrote them; its bundles in
  seq order with reads ahead; the bundle in effect at a position where
  several start (`core.claim.claim_in_effect`); `check` feeds a
  `core.verify.LogChecker` everything it decides on, the same way for
  `verify` and `search`.
- `entry_lines`: every entry of a log, as stored.

Every read has a budget, checked before reading (the listed size) and while
reading (the store stops one byte past it): a claim `MAX_CLAIM_BYTES`, a
checkpoint `MAX_NOTE_BYTES`, a bundle `max_bundle_bytes` of lines (default
the format's bound, `core.bundle.MAX_BUNDLE_BYTES`; `--max-bundle-bytes`),
decompressed as a stream that stops there. The bodies of bundles that are
not the log's (no claim names them: planted, superseded, another writer's)
are never read, and an object whose name is not in the layout is never read.

Formats come from extproc.core; nothing of the writer (extproc.log,
extproc.server) is imported here (tests/integration/test_boundaries.py).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

from extproc.core import layout
from extproc.core.bundle import MAX_BUNDLE_BYTES, bundle_lines, split_lines, stored_bound
from extproc.core.claim import MAX_CLAIM_BYTES, Claim, claim_in_effect
from extproc.core.findings import WARNING, Finding
from extproc.core.keyring import Keyring
from extproc.core.note import MAX_NOTE_BYTES
from extproc.core.verify import LogChecker
from extproc.errors import (
    ForeignObjectError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    VerificationError,
)
from extproc.store.base import ObjectStore, ObjectVersion

Bundle = tuple[str, layout.BundleName]  # key, and what its name says
# What reading a bundle gives: its lines (decompressed), or why there are none.
Read = bytes | VerificationError | ObjectNotFoundError


@dataclass
class LogObjects:
    """One log's objects, by kind, as listed."""

    checkpoints: list[tuple[str, int]] = field(default_factory=list)  # key, tree size
    bundles: list[Bundle] = field(default_factory=list)
    claims: list[tuple[str, int]] = field(default_factory=list)  # key, first seq
    cosigned: list[tuple[str, int]] = field(default_factory=list)  # key, tree size
    unknown: list[str] = field(default_factory=list)
    # Versioned stores: key -> the original (oldest) version, which is what is read.
    originals: dict[str, ObjectVersion] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # key -> size as listed
    # Findings about versions (overwrites, delete markers), found while listing.
    version_findings: list[Finding] = field(default_factory=list)


def _add(logs: dict[str, LogObjects], stray: list[str], store: ObjectStore, key: str) -> str:
    """File one key under its log; returns the log id ("" for a stray key)."""
    name = layout.parse_key(store.prefix, key)
    if name is None:
        stray.append(key)
        return ""
    objects = logs[name.log_id]
    if name.kind == "checkpoint" and name.size is not None:
        objects.checkpoints.append((key, name.size))
    elif name.kind == "bundle" and name.bundle is not None:
        objects.bundles.append((key, name.bundle))
    elif name.kind == "claim" and name.size is not None:
        objects.claims.append((key, name.size))
    elif name.kind == "cosigned" and name.size is not None:
        objects.cosigned.append((key, name.size))
    else:
        objects.unknown.append(key)
    return name.log_id


def list_logs(
    store: ObjectStore, log_id: str | None = None, from_seq: int = 0
) -> tuple[dict[str, LogObjects], list[str]]:
    """Group every object under <prefix>/logs/ (or only `log_id`'s) by log id;
    also return the stray keys (under logs/ without a valid log id). With
    `log_id` and `from_seq`, only the log's objects numbered `from_seq` and up
    (an incremental check from a verified size lists only what is new).

    On a versioned store, keys are listed from their versions: a key hidden by
    a delete marker is still there (its original is read), and every extra
    version or delete marker becomes a finding of its log.
    """
    logs: dict[str, LogObjects] = defaultdict(LogObjects)
    stray: list[str] = []
    ranges: list[tuple[str, str]]  # prefix, start after
    if log_id is None:
        ranges = [(layout.logs_prefix(store.prefix), "")]
    elif from_seq > 0:
        folders = layout.seq_folders(store.prefix, log_id)
        ranges = [(folder, layout.start_after(folder, from_seq)) for folder in folders]
    else:
        ranges = [(layout.log_prefix(store.prefix, log_id), "")]
    versioned = store.versioned()
    if versioned is None:
        for prefix, after in ranges:
            for obj in store.list(prefix, after):
                if found := _add(logs, stray, store, obj.key):
                    logs[found].sizes[obj.key] = obj.size
        return dict(logs), stray
    by_key: dict[str, list[ObjectVersion]] = defaultdict(list)
    for prefix, after in ranges:
        for version in versioned.versions(prefix, after):
            by_key[version.key].append(version)
    for key, versions in sorted(by_key.items()):
        real = [v for v in versions if not v.delete_marker]
        markers = [v for v in versions if v.delete_marker]
        found = _add(logs, stray, store, key)
        if not found:
            continue
        objects = logs[found]
        if not real:
            objects.version_findings.append(
                Finding(
                    found, key, f"delete marker on a key the log never wrote: {_vlist(markers)}"
                )
            )
            _forget(objects, key)
            continue
        objects.originals[key] = real[0]
        objects.sizes[key] = real[0].size
        if len(real) > 1:
            objects.version_findings.append(
                Finding(
                    found,
                    key,
                    f"object overwritten after publication: original {_vlist(real[:1])}, "
                    f"later {_vlist(real[1:])} (verifying the original)",
                )
            )
        if markers:
            objects.version_findings.append(
                Finding(
                    found,
                    key,
                    f"object deleted after publication: delete marker {_vlist(markers)} "
                    "(verifying the original)",
                )
            )
    return dict(logs), stray


def _forget(objects: LogObjects, key: str) -> None:
    objects.checkpoints = [c for c in objects.checkpoints if c[0] != key]
    objects.bundles = [b for b in objects.bundles if b[0] != key]
    objects.claims = [c for c in objects.claims if c[0] != key]
    objects.cosigned = [c for c in objects.cosigned if c[0] != key]
    objects.unknown = [u for u in objects.unknown if u != key]


def _vlist(versions: list[ObjectVersion]) -> str:
    return ", ".join(
        f"{v.version_id} at {v.last_modified.isoformat() if v.last_modified else '?'}"
        for v in versions
    )


def stray_findings(stray: Sequence[str]) -> list[Finding]:
    """The findings of keys under logs/ that name no valid log id: warnings, like
    every object no log claims (none of them can change a log)."""
    return [
        Finding("-", key, "object under logs/ with an invalid log id", WARNING) for key in stray
    ]


@dataclass(frozen=True)
class ReadBundle:
    """One bundle as `LogReader.check` read it."""

    key: str
    name: layout.BundleName
    data: bytes  # its newline-terminated lines, decompressed (b"" if unreadable)
    # Readable and, with a checker, the log's own: the bundle the claim in
    # effect at its position names (anything else there is reported, not counted).
    in_log: bool

    @cached_property
    def lines(self) -> list[bytes]:
        """The stored entry lines (core.bundle.split_lines)."""
        return split_lines(self.data)


class LogReader:
    """One log's objects in a store, read as its writer wrote them."""

    def __init__(
        self,
        store: ObjectStore,
        log_id: str,
        objects: LogObjects,
        max_bundle_bytes: int = MAX_BUNDLE_BYTES,
    ) -> None:
        self.store = store
        self.log_id = log_id
        self.objects = objects
        self.max_bundle_bytes = max_bundle_bytes
        self._versioned = store.versioned()

    @classmethod
    def open(
        cls,
        store: ObjectStore,
        log_id: str,
        from_seq: int = 0,
        max_bundle_bytes: int = MAX_BUNDLE_BYTES,
    ) -> LogReader:
        """List the objects of one log (its prefix only; numbered `from_seq` and
        up); none if it has none."""
        logs, _ = list_logs(store, log_id, from_seq)
        return cls(store, log_id, logs.get(log_id, LogObjects()), max_bundle_bytes)

    # --- objects ------------------------------------------------------------------------

    def read(self, key: str, limit: int) -> bytes:
        """The object as the log wrote it: on a versioned store its original
        version (a later version or a delete marker is reported by list_logs).
        ObjectTooLargeError past `limit` bytes: by the listed size before any
        read, and by the store while reading (a listing can lie)."""
        size = self.objects.sizes.get(key)
        if size is not None and size > limit:
            raise ObjectTooLargeError(key, limit, size)
        original = self.objects.originals.get(key)
        if original is not None and self._versioned is not None:
            return self._versioned.get_version(key, original.version_id, limit)
        return self.store.get(key, limit)

    def read_checkpoint(self, key: str) -> bytes:
        """A checkpoint object (a signed note: at most MAX_NOTE_BYTES)."""
        return self.read(key, MAX_NOTE_BYTES)

    def read_claim(self, key: str) -> bytes:
        """A claim object (at most MAX_CLAIM_BYTES)."""
        return self.read(key, MAX_CLAIM_BYTES)

    def written_ms(self, key: str) -> int | None:
        """When the store says the object was written (versioned stores), if it says."""
        original = self.objects.originals.get(key)
        written = original.last_modified if original is not None else None
        return int(written.timestamp() * 1000) if written is not None else None

    def bundles(self) -> list[Bundle]:
        """Every bundle listed, by first seq (then last)."""
        return sorted(self.objects.bundles, key=lambda b: (b[1].first, b[1].last))

    def bundle_data(self, key: str, name: layout.BundleName) -> bytes:
        """A bundle's newline-terminated lines, decompressed (VerificationError if
        its gzip is broken or it is over `max_bundle_bytes`, stored or decompressed)."""
        bound = self.max_bundle_bytes
        data = self.read(key, stored_bound(bound) if name.gzip else bound)
        try:
            return bundle_lines(data, compressed=name.gzip, limit=bound)
        except VerificationError as e:
            raise VerificationError(f"{key}: {e}") from e

    def _fetch(self, key: str, name: layout.BundleName) -> Read:
        try:
            return self.bundle_data(key, name)
        except (VerificationError, ObjectNotFoundError) as e:  # not found: listed, then gone
            return e

    def read_ahead(
        self, bundles: Sequence[Bundle], prefetch: int = 0
    ) -> Iterator[tuple[str, layout.BundleName, Read]]:
        """These bundles' data in the order given, with `prefetch` reads in flight
        on threads of their own (S3 latency; 0: each read when it is needed).
        Storage errors other than a missing object are raised."""
        if prefetch < 1:
            for key, name in bundles:
                yield key, name, self._fetch(key, name)
            return
        todo = iter(bundles)
        with ThreadPoolExecutor(prefetch) as pool:
            window: deque[tuple[str, layout.BundleName, Future[Read]]] = deque()
            for key, name in todo:
                window.append((key, name, pool.submit(self._fetch, key, name)))
                if len(window) >= prefetch:
                    break
            while window:
                key, name, future = window.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    window.append((nxt[0], nxt[1], pool.submit(self._fetch, *nxt)))
                yield key, name, future.result()

    # --- which bundle is the log's ------------------------------------------------------

    def claim_at(self, first: int, keyring: Keyring | None = None) -> Claim | None:
        """The claim in effect at `first` (core.claim.claim_in_effect). Without a
        keyring a signed claim is taken at its word: for callers that check the
        entries against a signed root anyway."""
        candidates = []
        for key, at in self.objects.claims:
            if at != first:
                continue
            name = layout.parse_key(self.store.prefix, key)
            try:
                claim = Claim.from_bytes(self.read_claim(key))
            except (VerificationError, ObjectNotFoundError):
                continue
            trusted = claim.signed
            if trusted and keyring is not None:
                try:
                    claim.verify(keyring)
                except VerificationError:
                    trusted = False
            candidates.append((name.epoch if name else 1, claim, trusted))
        chosen = claim_in_effect(candidates)
        return chosen[1] if chosen else None

    def bundles_in_effect(self, keyring: Keyring | None = None) -> list[Bundle]:
        """The log's bundles, contiguous from seq 0: at each position the one
        bundle that starts there or, where several do (a foreign object next to
        the writer's), the one the claim in effect names. Ends where no bundle
        starts; bundles off that chain are not the log's."""
        by_first: dict[int, list[Bundle]] = defaultdict(list)
        for key, name in self.bundles():
            by_first[name.first].append((key, name))
        chosen: list[Bundle] = []
        position = 0
        while here := by_first.get(position):
            if len(here) > 1:
                claim = self.claim_at(position, keyring)
                named = [b for b in here if claim is not None and b[1].last == claim.last]
                here = named or here[:1]
            chosen.append(here[0])
            position = here[0][1].last + 1
        return chosen

    # --- verification -------------------------------------------------------------------

    def feed(self, checker: LogChecker, *, base: int = 0) -> None:
        """Give `checker` everything but the bundles: findings about versions,
        unknown keys, checkpoints (with the store's write time where it knows it)
        claims and cosigned checkpoints. With `base` (a tree size an earlier run
        verified), only checkpoints from it on (or the largest there is: the
        evidence of a rollback), and claims and cosigned checkpoints from it on."""
        objects = self.objects
        checker.report.findings.extend(objects.version_findings)
        for key in objects.unknown:
            checker.add_unknown(key)  # not read: nothing in the layout is named so
        checkpoints = sorted(objects.checkpoints, key=lambda c: c[1])
        if base:
            newer = [c for c in checkpoints if c[1] >= base]
            checkpoints = newer or checkpoints[-1:]
        for key, size in checkpoints:
            if (data := self._read_small(checker, key, self.read_checkpoint)) is not None:
                checker.add_checkpoint(key, size, data, self.written_ms(key))
        for key, size in objects.cosigned:
            if size < base:
                continue
            # A checkpoint note again, with the witnesses' cosignatures.
            if (data := self._read_small(checker, key, self.read_checkpoint)) is not None:
                checker.add_cosigned(key, size, data)
        for key, first in objects.claims:
            if first < base:
                continue
            if (data := self._read_small(checker, key, self.read_claim)) is not None:
                checker.add_claim(key, first, data)

    @staticmethod
    def _read_small(checker: LogChecker, key: str, read: Callable[[str], bytes]) -> bytes | None:
        """A note or claim; None (reported) if it is gone, over its bound or not a file."""
        try:
            return read(key)
        except ObjectNotFoundError:
            checker.add_gone(key)  # listed, then gone: report it, keep going
        except VerificationError as e:  # over its bound, not a regular file
            checker.add_foreign(key, _why(key, e))
        return None

    def check(
        self, checker: LogChecker | None, *, base: int = 0, prefetch: int = 0
    ) -> Iterator[ReadBundle]:
        """Every bundle from `base` on, read in seq order (`prefetch`: see
        read_ahead) and, with a checker, checked: `feed` first, then each bundle.
        Call `checker.finish()` once this is exhausted.

        Bundles wholly below `base` were verified by an earlier run: counted,
        not read or yielded. Bundles that are not the log's (with a checker: not
        the one the claim in effect at their position names; without one: off
        `bundles_in_effect`) are yielded without being read, not in the log. An
        unreadable bundle is reported and yielded with no lines; without a
        checker nothing is decided.
        """
        theirs: Callable[[layout.BundleName], bool]
        if checker is not None:
            self.feed(checker, base=base)
            theirs = checker.claimed_here
        else:
            theirs = {name for _, name in self.bundles_in_effect()}.__contains__
        todo: list[Bundle] = []
        for key, name in self.bundles():
            if name.last < base:
                if checker is not None:
                    checker.add_bundle(key, name, b"")  # counted, not read
            elif theirs(name):
                todo.append((key, name))
            else:
                if checker is not None:
                    checker.add_bundle(key, name, b"")  # reported, not read
                yield ReadBundle(key, name, b"", in_log=False)
        read = self.read_ahead(todo, prefetch)
        for group in _by_range(todo):
            got = [next(read) for _ in group]
            if len(got) > 1 and checker is not None:
                got, others = _the_claimed_one(checker, got)
                yield from (ReadBundle(key, name, b"", in_log=False) for key, name in others)
            yield from self._checked(checker, got)

    def _checked(
        self, checker: LogChecker | None, got: list[tuple[str, layout.BundleName, Read]]
    ) -> Iterator[ReadBundle]:
        for key, name, data in got:
            if isinstance(data, ObjectNotFoundError):
                if checker is not None:
                    checker.add_gone(key)  # listed, then gone
                yield ReadBundle(key, name, b"", in_log=False)
            elif isinstance(data, VerificationError):
                if checker is not None:
                    checker.report.findings.append(Finding(self.log_id, key, _why(key, data)))
                    checker.add_bundle(key, name, b"")
                yield ReadBundle(key, name, b"", in_log=False)
            else:
                in_log = checker.add_bundle(key, name, data) if checker is not None else True
                yield ReadBundle(key, name, data, in_log)


def _by_range(bundles: list[Bundle]) -> Iterator[list[Bundle]]:
    """Bundles (sorted) in groups of one range: more than one is a `.jsonl` and a
    `.jsonl.gz` of the same range."""
    group: list[Bundle] = []
    for bundle in bundles:
        if group and (group[0][1].first, group[0][1].last) != (bundle[1].first, bundle[1].last):
            yield group
            group = []
        group.append(bundle)
    if group:
        yield group


def _the_claimed_one(
    checker: LogChecker, got: list[tuple[str, layout.BundleName, Read]]
) -> tuple[list[tuple[str, layout.BundleName, Read]], list[Bundle]]:
    """Two objects for one claimed range: a claim names the range, not the
    encoding, so the one whose last entry is the claim's is the log's and the
    others are foreign objects (each was read within its bound). Without one
    that matches, the first is checked as the log's (and fails)."""
    matching = [g for g in got if isinstance(g[2], bytes) and checker.claim_matches(g[1], g[2])]
    chosen = matching[0] if matching else got[0]
    others = [(key, name) for key, name, _ in got if key != chosen[0]]
    for key, _ in others:
        checker.add_foreign(key, f"a second bundle for the range claimed at {chosen[1].first}")
    return [chosen], others


def _why(key: str, e: VerificationError) -> str:
    """A reader error's message without the key it starts with (findings name it)."""
    if isinstance(e, ForeignObjectError):
        return e.why
    return str(e).removeprefix(f"{key}: ")


def open_logs(
    store: ObjectStore, max_bundle_bytes: int = MAX_BUNDLE_BYTES
) -> tuple[dict[str, LogReader], list[Finding]]:
    """A reader for every log under the store's prefix, and the stray keys' findings."""
    logs, stray = list_logs(store)
    readers = {
        log_id: LogReader(store, log_id, objects, max_bundle_bytes)
        for log_id, objects in logs.items()
    }
    return readers, stray_findings(stray)


def entry_lines(store: ObjectStore, log_id: str) -> Iterator[bytes]:
    """Every entry of a log as stored, in seq order: the lines of its bundles in
    effect (LogReader.bundles_in_effect), original versions on a versioned
    store. Nothing is verified: for looking at a log that `verify` checks
    (the demo, tests, benchmarks)."""
    reader = LogReader.open(store, log_id)
    for key, name in reader.bundles_in_effect():
        yield from split_lines(reader.bundle_data(key, name))
