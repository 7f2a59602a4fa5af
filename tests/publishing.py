"""A writer and its publisher for the publisher tests (tests/integration/publisher/)
and the tests that build on them (hostile store, self-audit): the writer of
one log, and what its store holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extproc.audit.verify import verify_store
from extproc.core import layout
from extproc.core.checkpoint import Checkpoint, open_checkpoint
from extproc.core.findings import LogReport, all_ok
from extproc.core.note import Signer
from extproc.log.appender import AuditLog
from extproc.log.publisher import Publisher, PublisherConfig
from extproc.log.wal import WAL
from extproc.store.base import ObjectStore, RetentionPolicy
from tests.helpers import eventually

LOG_ID = "pod-a.worker-0"
ORIGIN = layout.origin_for("audit.example/mesh", LOG_ID)
PREFIX = "audit/prod"
WRITER = "0123abcd"
RETENTION = RetentionPolicy("COMPLIANCE", 7)


@dataclass
class Writer:
    """One writer process: its WAL, audit log and publisher."""

    wal: WAL
    log: AuditLog
    publisher: Publisher

    async def append(self, count: int) -> list[int]:
        start = self.log.size
        return list(
            await asyncio.gather(
                *(self.log.append({"kind": "request", "n": start + i}) for i in range(count))
            )
        )

    def crash(self) -> None:
        """The process dies: the WAL lock and files are all that is left."""
        self.log.close()


def open_writer(
    wal_dir: Path,
    store: ObjectStore,
    signer: Signer,
    *,
    wal: WAL | None = None,
    on_fenced: Callable[[str], None] | None = None,
    **config: Any,
) -> Writer:
    """Call from inside the event loop (the audit log needs one)."""
    wal = wal or WAL(wal_dir)
    audit_log = AuditLog(wal, wal.recover())
    settings: dict[str, Any] = {"max_age": 0.0, "retry_max_delay": 0.001, "retention": RETENTION}
    settings.update(config)
    cfg = PublisherConfig(LOG_ID, ORIGIN, **settings)
    publisher = Publisher(audit_log, wal, store, signer, cfg, writer_id=WRITER, on_fenced=on_fenced)
    return Writer(wal, audit_log, publisher)


async def published(w: Writer, size: int) -> None:
    """Wait for the run loop to publish a checkpoint covering `size` entries."""
    await eventually(lambda: w.log.published.size >= size)
    assert w.log.published.size == size


def verify(store: ObjectStore, signer: Signer) -> LogReport:
    reports, general = verify_store(store, signer.verifier(), "audit.example/mesh")
    findings = [str(f) for f in general] + [str(f) for r in reports for f in r.findings]
    assert all_ok(reports, general), findings
    assert [r.log_id for r in reports] == [LOG_ID]
    return reports[0]


def bundle_ranges(store: ObjectStore) -> list[tuple[int, int]]:
    ranges = []
    for obj in store.list(layout.log_prefix(store.prefix, LOG_ID)):
        name = layout.parse_key(store.prefix, obj.key)
        assert name is not None and name.kind in ("bundle", "checkpoint", "claim"), obj.key
        if name.bundle is not None:
            ranges.append((name.bundle.first, name.bundle.last))
    return ranges


def checkpoint_sizes(store: ObjectStore) -> list[int]:
    prefix = layout.log_prefix(store.prefix, LOG_ID) + "checkpoints/"
    return [int(o.key.rsplit("/", 1)[1]) for o in store.list(prefix)]


def latest_checkpoint(store: ObjectStore, signer: Signer) -> Checkpoint:
    size = checkpoint_sizes(store)[-1]
    data = store.get(layout.checkpoint_key(store.prefix, LOG_ID, size))
    return open_checkpoint(data, signer.verifier())


def assert_contiguous(ranges: list[tuple[int, int]], size: int) -> None:
    expected = 0
    for first, last in ranges:
        assert first == expected, ranges
        expected = last + 1
    assert expected == size
