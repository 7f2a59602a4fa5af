"""What verifying a log says: findings, and the report of one log.

A Finding names the log, the object and what is wrong; ERROR is tampering
or loss (the log is not what an honest writer produced: exit 1), WARNING
what cannot change the log (a crash between writes, a foreign object).
Tampering never raises: it becomes a Finding, so one run reports every
problem it can see. core/verify.py fills a LogReport per log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from extproc.core.checkpoint import Checkpoint
from extproc.core.merkle import CompactRange
from extproc.core.status import LogStatus

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    """One thing wrong (ERROR) or worth knowing (WARNING) about a log or the store."""

    log_id: str
    key: str  # the object concerned, "" for the log as a whole
    message: str
    severity: str = ERROR
    # What proves it, for findings that compare two views (fork, rollback):
    # the signed notes as published, so they can be shown to a third party.
    evidence: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"{self.key}: " if self.key else ""
        log = f"log {self.log_id}: " if self.log_id else ""  # "": the bucket as a whole
        return f"{self.severity}: {log}{where}{self.message}"


@dataclass
class LogReport:
    """Everything verifying one log found: counts, the latest checkpoint, findings."""

    log_id: str
    entries: int = 0  # entries read, contiguous from seq 0
    bundles: int = 0
    checkpoints: int = 0  # valid signed checkpoints
    latest: Checkpoint | None = None
    findings: list[Finding] = field(default_factory=list)
    rehashed: int = 0  # entries hashed by this run (the rest came from the state file)
    resumed_from: int = 0  # tree size the run resumed at (0: from scratch)
    valid: list[Checkpoint] = field(default_factory=list)  # every valid checkpoint read
    latest_note: str = ""  # the latest checkpoint's signed note text
    status: LogStatus | None = None
    # Frontier and last leaf hex at the latest checkpoint, if its root matched:
    # what the state file keeps so that the next run can resume.
    frontier: tuple[CompactRange, str] | None = None
    # With a state file: the RFC 9162 consistency proof from the verified size
    # (resumed_from) to the latest checkpoint, computed from the data and checked.
    consistency_proof: list[bytes] | None = None
    keys: list[str] = field(default_factory=list)  # keys that signed valid checkpoints
    epoch: int = 1  # the writer's latest epoch (claims and checkpoints)
    # The writer's own records: `writer foreign` and `writer rotate` entries, as read.
    records: list[dict[str, object]] = field(default_factory=list)
    # Entries read by this run whose reporter was not authenticated (reporter.auth).
    unauthenticated: int = 0

    @property
    def ok(self) -> bool:
        return not any(f.severity == ERROR for f in self.findings)


def all_ok(reports: list[LogReport], general: list[Finding]) -> bool:
    """Every log verified (there is at least one) and no error outside the logs."""
    return (
        bool(reports)
        and all(r.ok for r in reports)
        and not any(f.severity == ERROR for f in general)
    )


def check_against_state(
    log_id: str,
    prior_size: int,
    prior_root: bytes,
    prior_note: str,
    latest: Checkpoint | None,
    latest_note: str,
) -> list[Finding]:
    """Compare the latest checkpoint with the one a previous run verified.

    A smaller tree is a rollback, the same size with another root a fork;
    both findings carry the two signed notes. A larger tree is checked by
    extending the verified frontier (LogChecker.resume), not here.
    """
    if latest is None:
        return []
    evidence = (prior_note, latest_note)
    if latest.size < prior_size:
        return [
            Finding(
                log_id,
                "",
                f"rollback: latest checkpoint has tree size {latest.size}, smaller than "
                f"size {prior_size} verified earlier (state file)",
                ERROR,
                evidence,
            )
        ]
    if latest.size == prior_size and latest.root_hash != prior_root:
        return [
            Finding(
                log_id,
                "",
                f"fork: checkpoint at tree size {prior_size} has another root than the one "
                "verified earlier (state file): two versions of the log are signed",
                ERROR,
                evidence,
            )
        ]
    return []
