"""Object Lock retention, as `verify` checks it (docs/AUDITING.md).

Two checks: every object of a log carries retention long enough
(`check_object_retention`, one HEAD per object, through the store reader),
and the bucket's default rule was not lowered or removed since it was
recorded on first use (`check_retention_rule`), or, without a record, is no
weaker than what the objects were written with (`check_rule_against_objects`).
What is wrong becomes a Finding; nothing here raises on tampering.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from extproc.audit.reader import LogReader
from extproc.core.findings import ERROR, WARNING, Finding
from extproc.core.state import RetentionRecord
from extproc.core.verify import LogChecker
from extproc.errors import ObjectNotFoundError, StorageError
from extproc.store.base import ObjectStore, RetentionPolicy

DAY_S = 86400
SLACK_DAYS = 1 / 24  # an hour, for clock skew and rounding


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


def check_object_retention(
    reader: LogReader,
    checker: LogChecker,
    key: str,
    min_days: float | None,
    seen: RetentionSeen | None = None,
) -> None:
    """The object's Object Lock retention (its original version on S3): missing,
    or shorter than `min_days` from when it was written, is a finding; `seen`
    collects what the objects were written with."""
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
