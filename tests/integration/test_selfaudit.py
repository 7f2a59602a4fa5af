"""The writer's self-audit: it finds what the store lost and fills it from the WAL.

The store here is the in-memory one, from which a test takes objects away:
what a store that acknowledged writes it never kept (measured on S3 through a
fault proxy, before writes were confirmed) leaves behind, or what an older
version of this server published into a gap. The real-S3 version of the same
story, under load through Envoy, is tests/integration/test_faults.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extproc import metrics, processes
from extproc.core import layout
from extproc.core.note import Signer
from extproc.errors import ForkError
from extproc.health import check_health
from extproc.log.selfaudit import FAILED, OK, REPAIRED, AuditOutcome, SelfAudit
from extproc.log.wal import AUDITED_FILE, WAL
from extproc.store.memory import MemoryStore
from tests.helpers import run
from tests.publishing import LOG_ID, PREFIX, Writer, open_writer, verify


class ListingStore(MemoryStore):
    """Records where each listing started (an incremental run lists only what is new)."""

    def __init__(self) -> None:
        super().__init__(PREFIX)
        self.started_after: list[str] = []

    def list(self, prefix: str, start_after: str = "") -> Iterator[Any]:
        self.started_after.append(start_after)
        return super().list(prefix, start_after)


def _key(kind: str, first: int, last: int = 0) -> str:
    if kind == "bundle":
        return layout.bundle_key(PREFIX, LOG_ID, first, last)
    if kind == "claim":
        return layout.claim_key(PREFIX, LOG_ID, first)
    return layout.checkpoint_key(PREFIX, LOG_ID, first)


async def _written(w: Writer, count: int) -> None:
    await w.publisher.reconcile()
    await w.append(count)
    await w.publisher.publish()


def _repaired_total() -> float:
    return float(
        sum(
            metrics.OBJECTS_REPAIRED.labels(kind)._value.get()
            for kind in ("bundle", "claim", "checkpoint")
        )
    )


def test_lost_bundle_claim_and_checkpoint_are_written_again(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore(PREFIX)
    lost = [_key("bundle", 20, 24), _key("claim", 20), _key("checkpoint", 30)]
    before = _repaired_total()

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=5)
        audit = SelfAudit(w.publisher, w.wal, interval=60)
        await _written(w, 20)
        assert (await audit.audit_once()).result == OK
        await w.append(10)
        await w.publisher.publish()
        for key in lost:  # acknowledged once, gone now
            del store.objects[key]
        outcome = await audit.audit_once()
        assert outcome.result == REPAIRED, outcome.problems
        assert sorted(outcome.repaired) == sorted(lost)
        assert outcome.verified_size == 30 == w.wal.audited_size
        w.crash()

    run(scenario)
    assert verify(store, signer).entries == 30
    assert _repaired_total() - before == 3
    assert metrics.SELF_AUDIT_UNREPAIRED._value.get() == 0


def test_second_run_lists_only_what_is_new(tmp_path: Path, signer: Signer) -> None:
    store = ListingStore()

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=5)
        audit = SelfAudit(w.publisher, w.wal, interval=60)
        await _written(w, 10)
        store.started_after.clear()
        assert (await audit.audit_once()).result == OK
        assert store.started_after == [""]  # the first run reads the whole log
        await w.append(5)
        await w.publisher.publish()
        store.started_after.clear()
        assert (await audit.audit_once()).verified_size == 15
        folders = layout.seq_folders(PREFIX, LOG_ID)
        assert store.started_after == [layout.start_after(f, 10) for f in folders]
        w.crash()

    run(scenario)


def test_state_survives_a_restart_and_segments_wait_for_it(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore(PREFIX)

    async def first() -> None:
        wal = WAL(tmp_path / "wal", segment_bytes=600)  # a segment every few entries
        w = open_writer(tmp_path / "wal", store, signer, wal=wal, bundle_max_entries=5)
        audit = SelfAudit(w.publisher, wal, interval=60)
        await _written(w, 5)
        await audit.audit_once()
        for _ in range(4):
            await w.append(5)
            await w.publisher.publish()
        # Published 25, audited 5: segments from 5 on stay.
        assert len(wal.segments()) > 1 and wal.segments()[0][0] <= 5
        w.crash()

    run(first)
    assert (tmp_path / "wal" / AUDITED_FILE).exists()
    del store.objects[_key("bundle", 10, 14)]

    async def second() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=5)
        audit = SelfAudit(w.publisher, w.wal, interval=60)
        assert audit.verified_size == 5  # from audited.json
        await w.publisher.reconcile()
        outcome = await audit.audit_once()
        assert outcome.result == REPAIRED, outcome.problems
        assert outcome.repaired == [_key("bundle", 10, 14)]
        w.crash()

    run(second)
    assert verify(store, signer).entries == 25


def test_a_gap_the_wal_no_longer_holds_is_a_loud_failure(
    tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore(PREFIX)

    async def scenario() -> None:
        wal = WAL(tmp_path / "wal", segment_bytes=600)
        w = open_writer(tmp_path / "wal", store, signer, wal=wal, bundle_max_entries=5)
        await w.publisher.reconcile()
        for _ in range(5):  # batches of 5: a segment each
            await w.append(5)
            await w.publisher.publish()
        # No self-audit yet: segments were pruned at the published size.
        assert wal.segments()[0][0] > 0
        del store.objects[_key("bundle", 0, 4)]
        outcome = await SelfAudit(w.publisher, wal, interval=60).audit_once()
        assert outcome.result == FAILED
        assert any("no longer holds them" in p for p in outcome.problems), outcome.problems
        w.crash()

    run(scenario)
    assert metrics.SELF_AUDIT_UNREPAIRED._value.get() >= 1
    assert any("SELF-AUDIT" in r.message and r.levelname == "ERROR" for r in caplog.records)


def test_restart_rewrites_a_lost_published_checkpoint(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore(PREFIX)

    async def first() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=5)
        await _written(w, 10)
        w.crash()

    run(first)
    del store.objects[_key("checkpoint", 10)]

    async def second() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=5)
        await w.publisher.reconcile()  # used to stop here: "no checkpoint at that size"
        assert _key("checkpoint", 10) in store.objects
        w.crash()

    run(second)
    assert verify(store, signer).entries == 10


def test_restart_on_an_emptied_store_still_refuses(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore(PREFIX)

    async def first() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=5)
        await _written(w, 10)
        w.crash()

    run(first)
    store.objects.clear()

    async def second() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=5)
        with pytest.raises(ForkError, match="nothing of this log"):
            await w.publisher.reconcile()
        w.crash()

    run(second)


# --- the real server ------------------------------------------------------------------------


@pytest.mark.envoy
def test_server_repairs_on_start_and_fails_closed_when_it_cannot(make_stack: Any) -> None:
    stack = make_stack(extra_args=["--self-audit-interval", "0.3", "--self-audit-fail-closed"])
    stack.start()
    assert len(stack.send(20, concurrency=2).request_ids) == 20
    assert stack.stop_server() == 0, stack.server_log()
    store = Path(stack.store_url)
    bundles = sorted(store.glob(f"logs/{stack.log_id}/entries/*.jsonl"))
    # The last bundle (the stop entry, published after the last self-audit) is lost.
    bundles[-1].unlink()
    assert stack.verify().returncode == 1

    stack.start_server()  # the self-audit on start writes it again from the WAL
    address = f"127.0.0.1:{stack.health_port}"
    processes.wait_until(
        lambda: "wrote 1 objects the store had lost again from the WAL" in stack.server_log(),
        "the lost bundle written again",
    )
    assert bundles[-1].exists()
    assert check_health(address).status == "SERVING"
    assert stack.stop_server() == 0, stack.server_log()
    assert stack.verify().returncode == 0

    # A bundle whose bytes changed cannot be repaired: the server says so and,
    # as asked (--self-audit-fail-closed), stops reporting SERVING.
    first = bundles[0]
    first.write_bytes(first.read_bytes().replace(b"{", b"{ ", 1))
    (Path(stack.workdir) / "wal" / stack.log_id / AUDITED_FILE).unlink()  # audit from 0
    stack.start_server(serving=False)
    processes.wait_until(
        lambda: check_health(address).status == "NOT_SERVING", "NOT_SERVING after the self-audit"
    )
    assert "SELF-AUDIT: log" in stack.server_log()
    assert len(stack.send(3, concurrency=1).request_ids) == 3  # requests still logged
    assert stack.stop_server() == 0, stack.server_log()


def test_self_audit_lines_escape_control_characters_from_object_names(
    tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """Problems quote object names, chosen by whoever can write the bucket: an ANSI
    erase and a carriage return must not rewrite the server's log on a terminal."""
    store = MemoryStore(PREFIX)
    planted = f"{PREFIX}/logs/{LOG_ID}/entries/\x1b[2K\rall good\u202e"

    class Planted(SelfAudit):
        async def _audit(self) -> AuditOutcome:
            return AuditOutcome(FAILED, 0, [f"{planted}: object is not part of the log layout"])

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer)
        await Planted(w.publisher, w.wal, interval=60).audit_once()
        w.crash()

    run(scenario)
    (line,) = [r.getMessage() for r in caplog.records if "SELF-AUDIT" in r.getMessage()]
    assert line.isprintable(), line
    assert "\\x1b[2K\\rall good\\u202e" in line
