"""`verify`: read a published store and verify every log in it.

Needs only read access to the store and the verifier key. Objects are listed
and read by extproc.reader (original versions on S3, see there), every
decision is made by extproc.core.verify; what is verify's own lives here:
the state file (incremental runs), Object Lock retention checks, log status
and the JSON report. See docs/AUDITING.md for the threat model.
"""

from __future__ import annotations

import base64
import contextlib
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from extproc.core import entry
from extproc.core.bundle import MAX_BUNDLE_BYTES
from extproc.core.checkpoint import open_checkpoint
from extproc.core.keyring import Keyring
from extproc.core.note import Verifier
from extproc.core.state import AuditState, LogState, RetentionRecord
from extproc.core.verify import (
    ERROR,
    WARNING,
    Finding,
    LogChecker,
    LogReport,
    all_ok,
    check_against_state,
    log_status,
)
from extproc.errors import ObjectNotFoundError, StorageError, VerificationError
from extproc.reader import LogObjects, LogReader, open_logs
from extproc.reader import list_logs as list_logs  # scripts/bench.py reads it from here
from extproc.store.base import ObjectStore, RetentionPolicy

DAY_S = 86400


@dataclass
class AuditOptions:
    """Everything a run can be asked for beyond the store and the key."""

    origin_prefix: str | None = None
    deep: bool = False
    parallel: int = 8
    state: AuditState | None = None  # previous run's state: verify incrementally
    full: bool = False  # ignore the state's frontier, re-read everything (still compare)
    min_retention_days: float | None = None  # None: the recorded rule, else the bucket's
    accept_retention: bool = False  # record the bucket's current rule as the new bar
    gap_threshold_s: float = 300.0
    since_ms: int | None = None
    until_ms: int | None = None
    now_ms: int | None = None  # the clock, passed in (default: now)
    require_authenticated: bool = False  # an entry from an unauthenticated reporter is an error
    on_total: Callable[[int], None] | None = None  # entries this run will hash
    on_entries: Callable[[int], None] | None = None  # entries hashed so far (delta)
    max_bundle_bytes: int = MAX_BUNDLE_BYTES  # a bundle's lines, at most (--max-bundle-bytes)


@dataclass
class AuditResult:
    reports: list[LogReport]  # the logs to show (--since/--until may leave some out)
    general: list[Finding]
    state: AuditState  # the state to save if the run is valid
    ok: bool  # every log verified (shown or not)
    logs: int  # logs verified
    retention: RetentionRule


def _fingerprint(objects: LogObjects, key: str) -> str:
    original = objects.originals.get(key)
    return f"{objects.sizes.get(key, 0)}:{original.version_id if original else ''}"


def _below(objects: LogObjects, base: int) -> list[str]:
    """Keys wholly inside the first `base` entries (checked by an earlier run)."""
    return (
        [k for k, size in objects.checkpoints if size <= base]
        + [k for k, first in objects.claims if first < base]
        + [k for k, name in objects.bundles if name.last < base]
    )


def verify_log(
    reader: LogReader,
    verifier: Keyring | Verifier,
    origin_prefix: str | None = None,
    on_entries: Callable[[int], None] | None = None,
    *,
    deep: bool = False,
    prior: LogState | None = None,
    min_retention_days: float | None = None,
    seen: RetentionSeen | None = None,
    compare_objects: bool = True,
    check_retention: bool = True,
    now_ms: int | None = None,
) -> LogReport:
    """Verify one log; with `prior`, resume from the tree an earlier run verified.

    `compare_objects=False`: objects below the prior size are not held to the
    prior's list (the writer's self-audit lists only what is new);
    `check_retention=False`: no Object Lock checks (one HEAD per object);
    `now_ms`: the auditor's clock (default: now), evidence for keys with an end date.
    """
    objects = reader.objects
    if now_ms is None:
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
    checker = LogChecker(reader.log_id, verifier, origin_prefix, deep=deep, now_ms=now_ms)
    base = 0
    if prior is not None:
        base = prior.size
        checker.resume(prior.tree(), prior.last_leaf)
        if compare_objects:
            _compare_old_objects(checker, objects, prior)
    for bundle in reader.check(checker, base=base):
        if on_entries is not None:
            on_entries(bundle.name.last - bundle.name.first + 1)
    if check_retention and reader.store.supports_retention:
        below = set(_below(objects, base)) if base else set()
        keys = [k for k, _ in objects.checkpoints + objects.claims] + [
            k for k, _ in objects.bundles
        ]
        for key in keys:
            # Older objects were checked when they were new; foreign ones are not the log's.
            if key not in below and not checker.is_foreign(key):
                _check_retention(reader, checker, key, min_retention_days, seen)
    report = checker.finish()
    if prior is not None:
        report.findings.extend(
            check_against_state(
                reader.log_id,
                prior.size,
                prior.root_hash,
                prior.checkpoint,
                report.latest,
                report.latest_note,
            )
        )
    return report


def _compare_old_objects(checker: LogChecker, objects: LogObjects, prior: LogState) -> None:
    """Objects below the verified size are compared with the state, not re-read."""
    listed = set(_below(objects, prior.size))
    for key in sorted(listed):
        seen = prior.objects.get(key)
        if seen is None:
            checker.report.findings.append(
                Finding(
                    checker.log_id,
                    key,
                    "object appeared below the verified tree size "
                    "since the last verified run (inserted)",
                )
            )
        elif seen != _fingerprint(objects, key):
            checker.report.findings.append(
                Finding(
                    checker.log_id,
                    key,
                    f"object changed since the last verified run "
                    f"(was {seen}, now {_fingerprint(objects, key)})",
                )
            )
    for key in sorted(set(prior.objects) - listed):
        checker.report.findings.append(
            Finding(checker.log_id, key, "object verified in the last run is gone (deleted)")
        )


class RetentionSeen:
    """The strongest retention the objects of a run were written with: what the
    bucket's rule was, at the latest, when they were written (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.compliance = False
        self.days = 0.0

    def add(self, mode: str, days: float) -> None:
        with self._lock:
            self.compliance = self.compliance or mode == "COMPLIANCE"
            self.days = max(self.days, days)


def _check_retention(
    reader: LogReader,
    checker: LogChecker,
    key: str,
    min_days: float | None,
    seen: RetentionSeen | None = None,
) -> None:
    original = reader.objects.originals.get(key)
    versioned = reader.store.versioned()
    if versioned is not None:
        try:
            info = versioned.lock_info(key, original.version_id if original else None)
        except ObjectNotFoundError:
            return  # reported as missing already
        retention, written = info.retention, info.last_modified
    else:
        retention, written = reader.store.retention(key), None
    if retention is None:
        checker.add_retention_missing(key)
        return
    if written is None:
        return
    days = (retention.until - written).total_seconds() / DAY_S
    if seen is not None:
        seen.add(retention.mode, days)
    if min_days is not None and days < min_days - SLACK_DAYS:
        checker.report.findings.append(
            Finding(
                checker.log_id,
                key,
                f"object retained {days:.1f} days ({retention.mode} until "
                f"{retention.until.isoformat()}), less than the required {min_days:g}",
            )
        )


SLACK_DAYS = 1 / 24  # an hour, for clock skew and rounding


def _weaker(mode: str, days: float, than_mode: str, than_days: float) -> bool:
    return days < than_days - SLACK_DAYS or (mode != "COMPLIANCE" and than_mode == "COMPLIANCE")


def _rule_text(mode: str, days: float) -> str:
    return f"{mode} {days:g} days"


@dataclass
class RetentionRule:
    """The bucket-level retention check of one run (docs/AUDITING.md)."""

    checked: bool  # the store has Object Lock retention at all
    current: RetentionPolicy | None  # the bucket's default rule now (None: none/unreadable)
    readable: bool
    recorded: RetentionRecord | None  # the bar, as the state holds it after this run
    min_days: float | None  # what every object is held to
    findings: list[Finding]


def check_retention_rule(
    store: ObjectStore,
    recorded: RetentionRecord | None,
    min_days: float | None,
    *,
    accept: bool = False,
    now_ms: int,
) -> RetentionRule:
    """Compare the bucket's default rule with the one recorded on first use.

    A rule lowered or removed since it was recorded is an error: lowering it
    is how a writer with PutBucketObjectLockConfiguration would make future
    objects deletable soon, and the per-object check alone follows the rule
    down. Without a record, the current rule is recorded (trust on first use).
    """
    if not store.supports_retention:
        return RetentionRule(False, None, True, recorded, None, [])
    findings: list[Finding] = []
    readable = True
    try:
        current = store.default_retention()
    except StorageError as e:
        current, readable = None, False
        findings.append(
            Finding(
                "",
                "",
                f"cannot read the bucket's default retention rule ({e}): "
                + (
                    f"objects held to the rule recorded {recorded.recorded_at}"
                    if recorded is not None
                    else "only 'has retention' is checked (pass --min-retention-days)"
                ),
                WARNING,
            )
        )
    at = datetime.fromtimestamp(now_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
    if readable and (accept or recorded is None):
        if current is not None:
            recorded = RetentionRecord(current.mode, current.days, at)
        elif accept:
            recorded = None  # a removal accepted: nothing to hold the bucket to
    elif readable and recorded is not None:
        was = _rule_text(recorded.mode, recorded.days)
        if current is None:
            findings.append(
                Finding(
                    "",
                    "",
                    f"the bucket's default retention rule was removed (recorded {was} at "
                    f"{recorded.recorded_at}); if deliberate, run once with --accept-retention",
                )
            )
        elif _weaker(current.mode, current.days, recorded.mode, recorded.days):
            findings.append(
                Finding(
                    "",
                    "",
                    f"the bucket's default retention rule was lowered to "
                    f"{_rule_text(current.mode, current.days)} (recorded {was} at "
                    f"{recorded.recorded_at}); if deliberate, run once with --accept-retention",
                )
            )
    if min_days is None:
        if recorded is not None:
            min_days = float(recorded.days)
        elif current is not None:
            min_days = float(current.days)
    return RetentionRule(True, current, readable, recorded, min_days, findings)


def check_rule_against_objects(rule: RetentionRule, seen: RetentionSeen) -> list[Finding]:
    """Without a record to compare with, the objects' own retention shows the
    rule they were written under: a weaker rule now was lowered since (or the
    writer sets its own, longer, --retention-days)."""
    if not rule.readable or not seen.days or any(f.severity == ERROR for f in rule.findings):
        return []
    strongest = ("COMPLIANCE" if seen.compliance else "GOVERNANCE", seen.days)
    current = rule.current
    if current is not None and not _weaker(current.mode, current.days, *strongest):
        return []
    carried = _rule_text(strongest[0], round(strongest[1], 1))
    if current is None:
        what = f"the bucket has no default retention rule, but its objects carry up to {carried}"
        why = "removed since"
    else:
        what = (
            f"the bucket's default retention rule ({_rule_text(current.mode, current.days)}) "
            f"is weaker than the objects were written with (up to {carried})"
        )
        why = "lowered since"
    return [
        Finding(
            "",
            "",
            f"{what}: {why}, or the writer sets its own --retention-days; verify with "
            "--state to hold the bucket to the rule recorded on first use",
            WARNING,
        )
    ]


def verify_store(
    store: ObjectStore,
    verifier: Keyring | Verifier,
    origin_prefix: str | None = None,
    *,
    parallel: int = 8,
    deep: bool = False,
) -> tuple[list[LogReport], list[Finding]]:
    """Verify every log under the store's prefix, several logs at a time."""
    result = audit_store(
        store, verifier, AuditOptions(origin_prefix=origin_prefix, parallel=parallel, deep=deep)
    )
    return result.reports, result.general


def audit_store(
    store: ObjectStore, verifier: Keyring | Verifier, options: AuditOptions
) -> AuditResult:
    """Verify every log, incrementally from `options.state`; return reports and the new state."""
    now_ms = options.now_ms
    if now_ms is None:
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
    logs, general = open_logs(store, options.max_bundle_bytes)
    prior_state = options.state or AuditState()
    rule = check_retention_rule(
        store,
        prior_state.retention,
        options.min_retention_days,
        accept=options.accept_retention,
        now_ms=now_ms,
    )
    general.extend(rule.findings)
    seen = RetentionSeen()
    for log_id in sorted(set(prior_state.logs) - set(logs)):
        general.append(
            Finding(log_id, "", "log verified in the last run has no objects any more (deleted)")
        )
    priors = {log_id: prior_state.logs.get(log_id) if not options.full else None for log_id in logs}
    if options.on_total is not None:
        total = 0
        for log_id, reader in logs.items():
            prior = priors[log_id]
            base = prior.size if prior is not None else 0
            total += sum(n.last - n.first + 1 for _, n in reader.objects.bundles if n.last >= base)
        options.on_total(total)

    def one(log_id: str) -> LogReport:
        report = verify_log(
            logs[log_id],
            verifier,
            options.origin_prefix,
            options.on_entries,
            deep=options.deep,
            prior=priors[log_id],
            min_retention_days=rule.min_days,
            seen=seen,
            now_ms=now_ms,
        )
        if options.require_authenticated and report.unauthenticated:
            report.findings.append(
                Finding(
                    log_id,
                    "",
                    f"{report.unauthenticated} entries from unauthenticated reporters "
                    "(reporter.auth; --require-authenticated)",
                )
            )
        old = prior_state.logs.get(log_id)
        if options.full and old is not None:
            # --full re-reads everything but still holds the log to what was verified.
            report.findings.extend(
                check_against_state(
                    log_id,
                    old.size,
                    old.root_hash,
                    old.checkpoint,
                    report.latest,
                    report.latest_note,
                )
            )
        checkpoints = list(report.valid)
        if old is not None:
            with contextlib.suppress(VerificationError):
                checkpoints.append(open_checkpoint(old.checkpoint.encode(), verifier))
        report.status = log_status(
            checkpoints,
            now_ms,
            int(options.gap_threshold_s * 1000),
            options.since_ms,
            options.until_ms,
        )
        return report

    with ThreadPoolExecutor(max(1, options.parallel)) as pool:
        reports = list(pool.map(one, sorted(logs)))
    general.extend(check_rule_against_objects(rule, seen))
    state = _next_state(prior_state, reports, {i: r.objects for i, r in logs.items()}, now_ms)
    state.retention = rule.recorded
    ok = all_ok(reports, general)
    shown = reports
    if options.since_ms is not None or options.until_ms is not None:
        # The window selects what is reported; hashing still covered every
        # log (a tree is cumulative), and an invalid log is always shown.
        shown = [r for r in reports if r.status is None or r.status.in_window or not r.ok]
    return AuditResult(shown, general, state, ok, len(reports), rule)


def _next_state(
    prior: AuditState, reports: list[LogReport], logs: dict[str, LogObjects], now_ms: int
) -> AuditState:
    """The state after this run: every valid log advanced to its latest checkpoint."""
    state = AuditState(dict(prior.logs))
    for report in reports:
        advanced = log_state_after(report, logs[report.log_id], now_ms)
        if advanced is not None:
            state.logs[report.log_id] = advanced
    return state


def log_state_after(report: LogReport, objects: LogObjects, now_ms: int) -> LogState | None:
    """A valid log's state at its latest checkpoint (None: nothing to advance to)."""
    latest = report.latest
    if latest is None or not report.ok or report.frontier is None:
        return None
    tree, last_leaf = report.frontier
    return LogState(
        origin=latest.origin,
        size=latest.size,
        root_hash=latest.root_hash,
        checkpoint=report.latest_note,
        frontier=tree.hashes,
        last_leaf=last_leaf,
        verified_at=datetime.fromtimestamp(now_ms / 1000, UTC).isoformat().replace("+00:00", "Z"),
        objects={k: _fingerprint(objects, k) for k in _below(objects, latest.size)},
    )


def load_state(path: Path) -> AuditState:
    """Read a state file; a missing file is an empty state (trust on first use)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return AuditState()
    except OSError as e:
        raise StorageError(f"cannot read state file {path}: {e.strerror}") from e
    return AuditState.from_bytes(data)


def save_state(path: Path, state: AuditState) -> None:
    """Replace the state file atomically (temp file, fsync, rename)."""
    directory = path.parent if str(path.parent) else Path()
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(state.to_bytes())
                f.flush()
                os.fsync(f.fileno())
            Path(tmp).replace(path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                Path(tmp).unlink()
    except OSError as e:
        raise StorageError(f"cannot write state file {path}: {e.strerror}") from e


def parse_time_ms(text: str) -> int:
    """--since/--until: RFC 3339 (`2026-11-26T16:00:00Z`) or a date (UTC midnight)."""
    return int(entry.parse_time(text).timestamp() * 1000)


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _finding_json(f: Finding) -> dict[str, object]:
    doc: dict[str, object] = {"severity": f.severity, "key": f.key, "message": f.message}
    if f.evidence:
        doc["evidence"] = list(f.evidence)
    return doc


def _rule_json(mode: str, days: int, recorded_at: str | None = None) -> dict[str, object]:
    doc: dict[str, object] = {"mode": mode, "days": days}
    if recorded_at is not None:
        doc["recorded_at"] = recorded_at
    return doc


def result_to_json(result: AuditResult, store_url: str) -> dict[str, object]:
    """The `verify --format json` document (schema in docs/AUDITING.md)."""
    logs = []
    for r in result.reports:
        status = r.status
        latest = r.latest
        logs.append(
            {
                "log_id": r.log_id,
                "ok": r.ok,
                "entries": r.entries,
                "unauthenticated": r.unauthenticated,
                "rehashed": r.rehashed,
                "resumed_from": r.resumed_from,
                "consistency_proof": None
                if r.consistency_proof is None
                else [base64.b64encode(h).decode() for h in r.consistency_proof],
                "bundles": r.bundles,
                "checkpoints": r.checkpoints,
                "keys": r.keys,
                "epoch": r.epoch,
                "records": r.records,
                "latest": None
                if latest is None
                else {
                    "origin": latest.origin,
                    "size": latest.size,
                    "root": base64.b64encode(latest.root_hash).decode(),
                    "time": _iso(latest.timestamp_ms),
                    "writer": latest.writer,
                    "final": latest.final,
                    "note": r.latest_note,
                },
                "status": None
                if status is None
                else {
                    "state": status.state,
                    "newest": _iso(status.newest_ms),
                    "age_seconds": status.age_s,
                    "writers": status.writers,
                    "gaps": [
                        {
                            "kind": g.kind,
                            "start": _iso(g.start_ms),
                            "end": _iso(g.end_ms),
                            "seconds": g.seconds,
                            "writer": g.writer,
                        }
                        for g in status.gaps
                    ],
                },
                "findings": [_finding_json(f) for f in r.findings],
            }
        )
    return {
        "version": 1,
        "store": store_url,
        "valid": result.ok,
        "logs_verified": result.logs,
        "entries": sum(r.entries for r in result.reports),
        "unauthenticated": sum(r.unauthenticated for r in result.reports),
        "retention_checked": result.retention.checked,
        "retention": {
            "rule": None
            if result.retention.current is None
            else _rule_json(result.retention.current.mode, result.retention.current.days),
            "rule_readable": result.retention.readable,
            "recorded": None
            if result.retention.recorded is None
            else _rule_json(
                result.retention.recorded.mode,
                result.retention.recorded.days,
                result.retention.recorded.recorded_at,
            ),
            "min_days": result.retention.min_days,
        },
        "findings": [{"log_id": f.log_id, **_finding_json(f)} for f in result.general],
        "logs": logs,
    }
