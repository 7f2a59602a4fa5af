"""Log status: closed or open, age, and gaps in publication (pure: the
caller passes the clock and the log's valid checkpoints)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from extproc.core.checkpoint import Checkpoint


@dataclass(frozen=True)
class Gap:
    """A stretch of time in which the log published nothing.

    kind: `quiet` (one writer run, no checkpoint for longer than the
    threshold: with the writer's heartbeat entries (`serve
    --heartbeat-interval`, default 60 s) this means hung or cut off from the
    store, not idle),
    `stopped` (the writer shut down cleanly, the next run started later),
    `crash` (a writer run ended without a final checkpoint; the next run
    started at most `end_ms`).
    """

    start_ms: int
    end_ms: int
    kind: str
    writer: str  # the writer run before the gap

    @property
    def seconds(self) -> float:
        return (self.end_ms - self.start_ms) / 1000


@dataclass
class LogStatus:
    state: str  # closed (newest checkpoint is final) | open | empty
    newest_ms: int | None = None  # `time` of the newest checkpoint
    age_s: float | None = None  # now - newest_ms
    writers: list[str] = field(default_factory=list)  # writer runs, in log order
    gaps: list[Gap] = field(default_factory=list)
    in_window: bool = True  # the log was active during --since/--until


def log_status(
    checkpoints: list[Checkpoint],
    now_ms: int,
    gap_threshold_ms: int,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> LogStatus:
    """Status of one log from its valid checkpoints (pure: the caller passes the clock).

    Only checkpoints with a `time` line count for times. Gaps are reported
    when they overlap [since, until]; the log is `in_window` if its span of
    checkpoint times (up to now while open) overlaps the window.
    """
    ordered = sorted(checkpoints, key=lambda c: (c.size, c.timestamp_ms or 0))
    if not ordered:
        return LogStatus("empty", in_window=since_ms is None and until_ms is None)
    newest = ordered[-1]
    status = LogStatus("closed" if newest.final else "open")
    timed = [c for c in ordered if c.timestamp_ms is not None]
    if timed:
        status.newest_ms = max(c.timestamp_ms or 0 for c in timed)
        status.age_s = max(0, now_ms - status.newest_ms) / 1000
    for cp in ordered:
        if cp.writer and (not status.writers or status.writers[-1] != cp.writer):
            status.writers.append(cp.writer)
    for a, b in itertools.pairwise(timed):
        t0, t1 = a.timestamp_ms or 0, b.timestamp_ms or 0
        if a.writer != b.writer:
            kind = "stopped" if a.final else "crash"
        elif t1 - t0 > gap_threshold_ms:
            kind = "quiet"
        else:
            continue
        if kind == "stopped" and t1 - t0 <= gap_threshold_ms:
            continue  # a quick clean restart is not a gap worth reporting
        status.gaps.append(Gap(t0, t1, kind, a.writer or ""))
    if timed and status.state == "open" and now_ms - (status.newest_ms or 0) > gap_threshold_ms:
        # Still open and silent up to now: quiet, hung, or crashed without a final.
        status.gaps.append(Gap(status.newest_ms or 0, now_ms, "quiet", newest.writer or ""))
    lo = since_ms if since_ms is not None else -1
    hi = until_ms if until_ms is not None else 1 << 62
    status.gaps = [g for g in status.gaps if g.end_ms >= lo and g.start_ms <= hi]
    if timed:
        first = min(c.timestamp_ms or 0 for c in timed)
        last = now_ms if status.state == "open" else status.newest_ms or 0
        status.in_window = first <= hi and last >= lo
    return status
