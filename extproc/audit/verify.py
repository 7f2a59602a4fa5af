"""Verifying a published store: every log in it, or one log, incrementally.

A library: `verify` (the CLI) wraps `audit_store`, the writer's self-audit
calls `verify_log` and `log_state_after` on its own log, scripts call
`verify_store`. Objects are listed and read by extproc.audit.reader
(original versions on S3, see there); every decision about the log is made
by extproc.core.verify. What a run adds: resuming from the state an earlier
run verified (the objects below it compared, not re-read), Object Lock
retention (extproc.audit.retention), several logs at a time, and each log's
status (gaps, age). Reading and writing the state file is
extproc.audit.statefile's, printing the result extproc.audit.report's. See
docs/AUDITING.md for the threat model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from extproc.audit.reader import LogObjects, LogReader, open_logs
from extproc.audit.retention import (
    RetentionRule,
    RetentionSeen,
    check_object_retention,
    check_retention_rule,
    check_rule_against_objects,
)
from extproc.core.bundle import MAX_BUNDLE_BYTES
from extproc.core.checkpoint import open_checkpoint
from extproc.core.cosignature import WitnessPolicy
from extproc.core.findings import Finding, LogReport, all_ok, check_against_state
from extproc.core.keyring import Keyring
from extproc.core.note import Verifier
from extproc.core.state import AuditState, LogState
from extproc.core.status import log_status
from extproc.core.verify import LogChecker
from extproc.errors import VerificationError
from extproc.store.base import ObjectStore


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
    witnesses: WitnessPolicy | None = None  # k of n witnesses must cosign (core/witnessed.py)
    max_bundle_bytes: int = MAX_BUNDLE_BYTES  # a bundle's lines, at most (--max-bundle-bytes)


@dataclass
class AuditResult:
    """What `audit_store` found, and the state to save if the run is valid."""

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
    witnesses: WitnessPolicy | None = None,
) -> LogReport:
    """Verify one log; with `prior`, resume from the tree an earlier run verified.

    `compare_objects=False`: objects below the prior size are not held to the
    prior's list (the writer's self-audit lists only what is new);
    `check_retention=False`: no Object Lock checks (one HEAD per object);
    `now_ms`: the auditor's clock (default: now), evidence for keys with an end date;
    `witnesses`: the k of n witnesses whose cosignatures the latest checkpoint needs.
    """
    objects = reader.objects
    if now_ms is None:
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
    checker = LogChecker(
        reader.log_id, verifier, origin_prefix, deep=deep, now_ms=now_ms, witnesses=witnesses
    )
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
        keys = [k for k, _ in objects.checkpoints + objects.claims + objects.cosigned] + [
            k for k, _ in objects.bundles
        ]
        for key in keys:
            # Older objects were checked when they were new; foreign ones are not the log's.
            if key not in below and not checker.is_foreign(key):
                check_object_retention(reader, checker, key, min_retention_days, seen)
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
            witnesses=options.witnesses,
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
