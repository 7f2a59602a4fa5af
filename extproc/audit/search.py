"""Search published bundles for entries, verifying the log as it is read.

Streams: one bundle (read with at most --max-bundle-bytes of lines) per
fetch in flight, plus a bounded map of request entries waiting for their
response, so memory does not grow with the log. Matching rules are in
docs/SEARCH.md. The store is read by extproc.audit.reader, which feeds
extproc.core.verify.LogChecker exactly as it does for `verify`: every
decision about validity is made there. Lines are skipped by the quick byte
scans of core/scan.py before any parse.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from extproc.audit.reader import LogReader, open_logs
from extproc.core import entry, scan
from extproc.core.bundle import MAX_BUNDLE_BYTES
from extproc.core.fields import (
    KIND,
    KIND_ACCESS,
    KIND_EXCHANGE,
    KIND_REQUEST,
    KIND_RESPONSE,
    PATH,
    PRINCIPAL,
    REF,
    REQ,
    RESP,
    RID,
    SEQ,
    SRC,
    STATUS,
    TS,
    nested,
)
from extproc.core.findings import Finding, LogReport
from extproc.core.keyring import Keyring
from extproc.core.note import Verifier
from extproc.core.verify import LogChecker
from extproc.errors import ConfigError
from extproc.store.base import ObjectStore

# Request entries kept while their `response` entry has not been read. In
# enforce mode a response follows its request within the request's lifetime,
# so this covers ~100k requests in flight; past it the oldest is forgotten and
# its response can no longer be matched on request fields (docs/SEARCH.md).
MAX_PENDING_REQUESTS = 100_000

_STATUS_RE = re.compile(r"([1-5])xx|([1-5][0-9][0-9])")


def parse_time(value: str) -> str:
    """An RFC 3339 time or a YYYY-MM-DD date (UTC midnight), in the entries' `ts` form.

    Entries store `ts` as fixed-width UTC with microseconds, so bounds in the
    same form compare as strings.
    """
    return entry.ts_text(entry.parse_time(value))


def parse_status(value: str) -> frozenset[int]:
    """`500`, `5xx`, or a comma-separated list of them, as the set of statuses."""
    statuses: set[int] = set()
    for part in value.split(","):
        m = _STATUS_RE.fullmatch(part.strip().lower())
        if m is None:
            raise ConfigError(f"status {part.strip()!r} is not a code like 404 or a class like 5xx")
        if m.group(1):
            base = int(m.group(1)) * 100
            statuses.update(range(base, base + 100))
        else:
            statuses.add(int(m.group(2)))
    return frozenset(statuses)


@dataclass(frozen=True)
class Filters:
    """What to look for; every filter given must hold (docs/SEARCH.md)."""

    since: str | None = None  # inclusive, in `ts` form (parse_time)
    until: str | None = None  # exclusive
    principal: str | None = None  # fnmatch glob on src.principal, case-sensitive
    path: str | None = None  # fnmatch glob on req.path, case-sensitive
    status: frozenset[int] | None = None  # resp.status in this set
    request_id: str | None = None  # rid, exact
    join: bool = False  # with --status: print the matching response's request entry too

    @property
    def request_side(self) -> bool:
        return self.principal is not None or self.path is not None

    def request_ok(self, fields: dict[str, Any]) -> bool:
        """The request-side filters on a request (or exchange) entry's fields."""
        if self.path is not None:
            path = nested(fields, REQ, PATH)
            if not isinstance(path, str) or not fnmatch.fnmatchcase(path, self.path):
                return False
        if self.principal is not None:
            principal = nested(fields, SRC, PRINCIPAL)
            if not isinstance(principal, str) or not fnmatch.fnmatchcase(principal, self.principal):
                return False
        return True

    def response_ok(self, fields: dict[str, Any]) -> bool:
        if self.status is None:
            return True
        return nested(fields, RESP, STATUS) in self.status

    def entry_ok(self, fields: dict[str, Any]) -> bool:
        """Filters on the entry's own fields: time and request id."""
        ts = fields.get(TS)
        if not isinstance(ts, str):
            return self.since is None and self.until is None
        if (self.since is not None and ts < self.since) or (
            self.until is not None and ts >= self.until
        ):
            return False
        return self.request_id is None or fields.get(RID) == self.request_id


@dataclass(frozen=True)
class Match:
    """One entry to print: the exact stored line and its parsed fields.

    `request` is the request entry a `response` refers to, when it was read
    (for a table row's method, path and principal); `context` is True for a
    request printed only because --join asked for its matching response's
    request.
    """

    log_id: str
    line: bytes
    fields: dict[str, Any]
    request: dict[str, Any] | None = None
    context: bool = False


@dataclass
class SearchStats:
    logs: int = 0
    bundles: int = 0
    bundles_skipped: int = 0  # not scanned: outside the time window (still verified)
    entries_scanned: int = 0
    matches: int = 0
    reports: list[LogReport] = field(default_factory=list)
    general: list[Finding] = field(default_factory=list)


@dataclass
class _Pending:
    fields: dict[str, Any]
    line: bytes


class _LogScan:
    """Matches entries of one log, in order; holds the pending-request map."""

    def __init__(self, log_id: str, filters: Filters, keep_requests: bool) -> None:
        self.log_id = log_id
        self.filters = filters
        self.keep_requests = keep_requests
        self.pending: dict[int, _Pending] = {}
        f = filters
        self._rid_needle = scan.member(RID, f.request_id) if f.request_id is not None else None
        self._since = f.since.encode() if f.since else None
        self._until = f.until.encode() if f.until else None

    def outside_window(self, ts: bytes | None) -> bool:
        if ts is None:
            return False  # let the parse decide
        return (self._since is not None and ts < self._since) or (
            self._until is not None and ts >= self._until
        )

    def scan(self, lines: Sequence[bytes]) -> Iterator[Match]:
        filters, keep, pending = self.filters, self.keep_requests, self.pending
        needle = self._rid_needle
        timed = self._since is not None or self._until is not None
        loads, ts_of = orjson.loads, scan.top_level_ts
        # Cheap: lines where the rid is not even there are skipped (a request
        # and its response carry the same rid, so no join is lost).
        candidates: Iterable[bytes] = (
            lines if needle is None else (line for _, line in scan.lines_holding(lines, (needle,)))
        )
        for line in candidates:
            if timed and not keep and self.outside_window(ts_of(line)):
                continue
            try:
                fields = loads(line)
            except orjson.JSONDecodeError:
                continue  # not an entry: verification reports it
            if not isinstance(fields, dict):
                continue
            kind = fields.get(KIND)
            if kind == KIND_REQUEST:
                req_ok = filters.request_ok(fields)
                if keep:
                    seq = fields.get(SEQ)
                    if isinstance(seq, int) and req_ok:
                        pending[seq] = _Pending(fields, line)
                        if len(pending) > MAX_PENDING_REQUESTS:
                            del pending[next(iter(pending))]
                if req_ok and filters.status is None and filters.entry_ok(fields):
                    yield Match(self.log_id, line, fields)
            elif kind == KIND_RESPONSE:
                ref = fields.get(REF)
                request = pending.pop(ref, None) if keep and isinstance(ref, int) else None
                if filters.request_side and request is None:
                    continue  # its request did not match, or was forgotten
                if filters.response_ok(fields) and filters.entry_ok(fields):
                    req_fields = request.fields if request else None
                    if request is not None and filters.join and filters.status is not None:
                        yield Match(self.log_id, request.line, request.fields, context=True)
                    yield Match(self.log_id, line, fields, req_fields)
            elif kind in (KIND_EXCHANGE, KIND_ACCESS):
                # Both halves in one entry: the access-log record (ALS), or an
                # older observe-mode exchange. An access entry of an enforced
                # request links its request entry by `ref`.
                ref = fields.get(REF)
                request = pending.pop(ref, None) if keep and isinstance(ref, int) else None
                if (
                    filters.request_ok(fields)
                    and filters.response_ok(fields)
                    and filters.entry_ok(fields)
                ):
                    if request is not None and filters.join and filters.status is not None:
                        yield Match(self.log_id, request.line, request.fields, context=True)
                    yield Match(self.log_id, line, fields)
            elif not filters.request_side and filters.status is None and filters.entry_ok(fields):
                yield Match(self.log_id, line, fields)  # writer entries, future kinds


class StoreSearch:
    """Searches every log under a store (or the given log ids), in log id order.

    With a verifier, every object of each searched log is checked as by
    `verify` (signatures, claims, hash chain, Merkle roots; not Object Lock
    retention), and the reports are in `stats.reports` once `matches()` is
    exhausted. Without one, nothing is hashed, and bundles whose first and
    last entries lie outside the time window are not scanned.
    """

    def __init__(
        self,
        store: ObjectStore,
        filters: Filters,
        *,
        verifier: Keyring | Verifier | None = None,
        origin_prefix: str | None = None,
        log_ids: Sequence[str] = (),
        prefetch: int = 4,
        keep_requests: bool = False,
        max_bundle_bytes: int = MAX_BUNDLE_BYTES,
    ) -> None:
        self.store = store
        self.max_bundle_bytes = max_bundle_bytes
        self.filters = filters
        self.verifier = verifier
        self.origin_prefix = origin_prefix
        self.log_ids = list(log_ids)
        self.prefetch = max(1, prefetch)
        # The map is needed to match a response on its request's fields, to
        # print a request with --join, or to show a response's path in a table.
        self.keep_requests = keep_requests or filters.request_side or filters.join
        self.stats = SearchStats()
        self._selected: list[LogReader] | None = None

    def select_logs(self) -> list[str]:
        """List the store once and return the log ids that will be searched, in order."""
        if self._selected is None:
            logs, self.stats.general = open_logs(self.store, self.max_bundle_bytes)
            ids = sorted(set(self.log_ids)) if self.log_ids else sorted(logs)
            missing = [i for i in ids if i not in logs]
            if missing:
                raise ConfigError(f"no log {missing[0]!r} under {self.store.url}")
            self._selected = [logs[i] for i in ids]
        return [reader.log_id for reader in self._selected]

    def matches(self) -> Iterator[Match]:
        self.select_logs()
        for reader in self._selected or ():
            self.stats.logs += 1
            yield from self._search_log(reader)

    def _search_log(self, reader: LogReader) -> Iterator[Match]:
        checker = None
        if self.verifier is not None:
            now_ms = int(time.time() * 1000)  # the clock: evidence for keys with an end date
            checker = LogChecker(reader.log_id, self.verifier, self.origin_prefix, now_ms=now_ms)
        log_scan = _LogScan(reader.log_id, self.filters, self.keep_requests)
        stats = self.stats
        for bundle in reader.check(checker, prefetch=self.prefetch):
            stats.bundles += 1
            if not bundle.in_log:
                continue  # unreadable, or not the bundle its position's claim names: reported
            lines = bundle.lines
            if self._skippable(log_scan, lines):
                stats.bundles_skipped += 1
                continue
            stats.entries_scanned += len(lines)
            for match in log_scan.scan(lines):
                stats.matches += 1
                yield match
        if checker is not None:
            stats.reports.append(checker.finish())

    def _skippable(self, log_scan: _LogScan, lines: list[bytes]) -> bool:
        """A bundle wholly before `since` or from `until` on, judged by its first
        and last entries' `ts` (never when requests must be remembered: a
        request outside the window may have its response inside it)."""
        if not lines or log_scan.keep_requests:
            return False
        if self.filters.since is None and self.filters.until is None:
            return False
        first, last = scan.top_level_ts(lines[0]), scan.top_level_ts(lines[-1])
        if first is None or last is None:
            return False
        f = self.filters
        return (f.since is not None and last < f.since.encode()) or (
            f.until is not None and first >= f.until.encode()
        )
