"""The writer's self-audit: it verifies its own published log with the
verifier's code and fills from the WAL what the store lost.

Confirmed writes (log/writeonce.py) make sure each object was stored when it
was written. The self-audit checks what the store holds later, including
what an earlier run, or an older version of this server, published: on
start everything after the state it last verified (`audited.json` in the
WAL directory; the whole log the first time), then every
`--self-audit-interval` seconds only what is new (it lists from the
verified size on, so a run costs what was published since the last one).

What it can fill from the WAL, it fills, through the publisher's confirmed
write-once puts: bundles missing between the verified size and the published
size (with their claims), and the checkpoint at the published size. The WAL
keeps its segments until they are audited, so the entries are there.
Anything else (an object that does not verify, entries the WAL no longer
holds, a foreign object where a repair must go) is a loud error, counted in
`extproc_audit_self_audit_unrepaired`, and, with `--self-audit-fail-closed`,
turns the health status NOT_SERVING until a later run finds the log whole.

Retention is not checked here (the publisher wrote every object with it and
the auditor checks it); objects below the verified size are not re-listed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from extproc import metrics
from extproc.audit.reader import LogReader
from extproc.audit.verify import log_state_after, verify_log
from extproc.core import layout
from extproc.core.display import escape
from extproc.core.findings import ERROR, LogReport
from extproc.core.merkle import leaf_hash
from extproc.core.state import AuditState, LogState
from extproc.errors import AuditError, ConfigError, StorageError
from extproc.log.publisher import Publisher
from extproc.log.wal import WAL

log = logging.getLogger(__name__)

OK, REPAIRED, FAILED, ERRORED = "ok", "repaired", "failed", "error"
MAX_LOGGED_PROBLEMS = 10  # per run; the metric counts them all


@dataclass
class AuditOutcome:
    result: str  # ok | repaired | failed | error
    verified_size: int  # the log is verified in the store up to here
    problems: list[str] = field(default_factory=list)  # what could not be repaired
    repaired: list[str] = field(default_factory=list)  # keys written again


class SelfAudit:
    def __init__(
        self,
        publisher: Publisher,
        wal: WAL,
        *,
        interval: float,
        on_result: Callable[[AuditOutcome], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.publisher = publisher
        self.wal = wal
        self.interval = interval
        self.on_result = on_result
        self._wall_clock = wall_clock
        self.log_id = publisher.config.log_id
        origin = publisher.config.origin
        self.origin_prefix = origin[: -len(self.log_id) - 1]
        self.state = self._load()
        # Segments below the verified size may go; the rest are kept for repairs.
        wal.audited_size = self.state.size if self.state is not None else 0
        metrics.SELF_AUDIT_VERIFIED.set(wal.audited_size)

    def _load(self) -> LogState | None:
        try:
            data = self.wal.load_audited()
            return None if data is None else AuditState.from_bytes(data).logs.get(self.log_id)
        except (ConfigError, StorageError) as e:
            log.warning("self-audit state unreadable (%s): auditing the log from the start", e)
            return None

    @property
    def verified_size(self) -> int:
        return self.state.size if self.state is not None else 0

    async def run(self) -> None:
        """Audit once the publisher has reconciled, then every interval, until cancelled."""
        await self.publisher.reconciled_event.wait()
        while True:
            await self.audit_once()
            await asyncio.sleep(self.interval)

    async def audit_once(self) -> AuditOutcome:
        """One run: verify what is new, repair what the WAL can, record the result."""
        try:
            outcome = await self._audit()
        except (StorageError, OSError) as e:
            # The store could not be read: nothing is known, nothing is wrong yet.
            log.warning(
                "self-audit of log %s could not read the store: %s", self.log_id, escape(str(e))
            )
            outcome = AuditOutcome(ERRORED, self.verified_size, [str(e)])
        metrics.SELF_AUDIT_RUNS.labels(outcome.result).inc()
        if outcome.result != ERRORED:
            metrics.SELF_AUDIT_UNREPAIRED.set(len(outcome.problems))
        if outcome.result in (OK, REPAIRED):
            metrics.SELF_AUDIT_LAST_OK.set(self._wall_clock())
        if outcome.result == FAILED:
            for problem in outcome.problems[:MAX_LOGGED_PROBLEMS]:
                # Problems quote object names: whoever can write the bucket chose them.
                log.error("SELF-AUDIT: log %s: %s", self.log_id, escape(problem))
            if len(outcome.problems) > MAX_LOGGED_PROBLEMS:
                log.error(
                    "SELF-AUDIT: log %s: %d more problems (run `extproc-audit verify`)",
                    self.log_id,
                    len(outcome.problems) - MAX_LOGGED_PROBLEMS,
                )
        if self.on_result is not None:
            self.on_result(outcome)
        return outcome

    async def _audit(self) -> AuditOutcome:
        published = self.publisher.log.published  # what the store must hold by now
        report, reader = await asyncio.to_thread(self._verify)
        if self._whole(report, published.size):
            await self._advance(report, reader)
            return AuditOutcome(OK, self.verified_size)
        root = published.compact_range().root()
        repaired, problems = await self._repair(reader, report, published.size, root)
        if problems:
            return AuditOutcome(FAILED, self.verified_size, problems, repaired)
        if repaired:
            report, reader = await asyncio.to_thread(self._verify)
            if self._whole(report, published.size):
                log.warning(
                    "self-audit: log %s: wrote %d objects the store had lost again from the "
                    "WAL: %s",
                    self.log_id,
                    len(repaired),
                    ", ".join(layout.relative(self.publisher.store.prefix, k) for k in repaired),
                )
                await self._advance(report, reader)
                return AuditOutcome(REPAIRED, self.verified_size, [], repaired)
        return AuditOutcome(FAILED, self.verified_size, _problems(report, published.size), repaired)

    def _verify(self) -> tuple[LogReport, LogReader]:
        """verify's own check of everything after the verified size (blocking)."""
        reader = LogReader.open(self.publisher.store, self.log_id, self.verified_size)
        report = verify_log(
            reader,
            self.publisher.own_keys,
            self.origin_prefix,
            prior=self.state,
            compare_objects=False,
            check_retention=False,
        )
        return report, reader

    def _whole(self, report: LogReport, published: int) -> bool:
        """Valid, and a checkpoint covers everything published when the run began."""
        if not report.ok:
            return False
        latest = report.latest.size if report.latest is not None else self.verified_size
        return latest >= published

    async def _advance(self, report: LogReport, reader: LogReader) -> None:
        state = log_state_after(report, reader.objects, int(self._wall_clock() * 1000))
        if state is None or state.size <= self.verified_size:
            return
        state.objects.clear()  # listed from the verified size on: nothing to compare
        data = AuditState({self.log_id: state}).to_bytes()
        await asyncio.to_thread(
            self.wal.save_audited, data, state.size, self.publisher.log.published.size
        )
        self.state = state
        metrics.SELF_AUDIT_VERIFIED.set(state.size)

    async def _repair(
        self, reader: LogReader, report: LogReport, published: int, root: bytes
    ) -> tuple[list[str], list[str]]:
        """Write again what is missing below `published`; (keys written, problems)."""
        repaired: list[str] = []
        problems: list[str] = []
        by_first: dict[int, list[layout.BundleName]] = defaultdict(list)
        for _, name in reader.bundles():
            by_first[name.first].append(name)
        position = self.verified_size
        while position < published:
            here = by_first.get(position)
            if here:
                claim = reader.claim_at(position, self.publisher.own_keys)
                named = [n for n in here if claim is not None and n.last == claim.last]
                position = (named or here)[0].last + 1
                continue
            after = [first for first in by_first if first > position]
            end = min([*after, published]) - 1
            try:
                repaired += await self._fill(reader, report, position, end)
            except AuditError as e:
                problems.append(str(e))
                break
            position = end + 1
        if not problems and not any(size >= published for _, size in reader.objects.checkpoints):
            try:
                repaired.append(await self.publisher.checkpoint_again(published, root))
            except AuditError as e:
                problems.append(f"checkpoint at size {published} missing, not rewritten: {e}")
        return repaired, problems

    async def _fill(self, reader: LogReader, report: LogReport, first: int, last: int) -> list[str]:
        """Bundles (and claims where there are none) for entries first..last, from the WAL.
        A claim is written in the epoch of the checkpoints that cover its position
        (a later epoch there would read as a second history)."""
        lines = await asyncio.to_thread(self.wal.read_lines, first, last - first + 1)
        if len(lines) != last - first + 1:
            raise StorageError(
                f"entries {first}..{last} are missing from the store and the WAL no longer "
                "holds them: they cannot be repaired (see docs/RUNBOOK.md)"
            )
        written: list[str] = []
        max_entries = self.publisher.config.bundle_max_entries
        position = first
        while position <= last:
            claim = reader.claim_at(position, self.publisher.own_keys)
            if claim is not None and claim.last <= last:
                end = claim.last
            else:
                claim, end = None, min(last, position + max_entries - 1)
            chunk = lines[position - first : end - first + 1]
            tail = leaf_hash(chunk[-1])
            if claim is not None and not claim.matches(position, end, tail):
                raise StorageError(
                    f"the claim at {position} does not describe the WAL's entries "
                    f"{position}..{end}: not repairable from this WAL"
                )
            if claim is None:
                covering = [cp.epoch for cp in report.valid if cp.size > position]
                epoch = min(covering) if covering else None
                written.append(await self.publisher.claim_again(position, end, tail, epoch))
            written.append(await self.publisher.bundle_again(position, end, chunk))
            position = end + 1
        return written


def _problems(report: LogReport, published: int) -> list[str]:
    problems = [str(f) for f in report.findings if f.severity == ERROR]
    latest = report.latest.size if report.latest is not None else 0
    if not problems and latest < published:
        problems.append(f"no checkpoint in the store covers the published size {published}")
    return problems
