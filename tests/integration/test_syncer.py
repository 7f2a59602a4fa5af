"""The syncer helper process: batches become durable through it, and what its
death, a segment switch and the end of the server do to the log.

Every test runs the real helper (a child process of the test runner, or of a
server process the test kills) against a real WAL directory. Which segment
the helper will fdatasync is read from /proc/<pid>/fd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from extproc.core import entry
from extproc.core.merkle import leaf_hash
from extproc.errors import DurabilityError
from extproc.log.appender import AuditLog, SyncerFactory
from extproc.log.syncer import Syncer
from extproc.log.wal import WAL
from tests.helpers import eventually, run

T = TypeVar("T")


def open_log(directory: Path, syncer: SyncerFactory = Syncer, **wal_options: Any) -> AuditLog:
    wal = WAL(directory, **wal_options)
    return AuditLog(wal, wal.recover(), syncer=syncer)


def request(i: int) -> dict[str, Any]:
    return {"kind": "request", "req": {"method": "GET", "path": f"/r/{i}"}}


def helper(log: AuditLog) -> subprocess.Popen[bytes]:
    proc = log._syncer._proc
    assert proc is not None, "no syncer helper running"
    return proc


def open_segments(pid: int) -> set[str]:
    """Names of the WAL segments a process holds open."""
    names = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            target = fd.readlink()
            if target.name.startswith("segment-"):
                names.add(target.name)
    return names


def exited(pid: int) -> bool:
    """Gone, or a zombie nobody reaped (PID 1 in a container may not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def recovered_lines(directory: Path) -> list[bytes]:
    wal = WAL(directory)
    try:
        return wal.recover().lines
    finally:
        wal.close()


def assert_chain(lines: list[bytes]) -> None:
    prev = ""
    for seq, line in enumerate(lines):
        fields = entry.parse(line)
        assert (fields["seq"], fields["prev"]) == (seq, prev)
        prev = leaf_hash(line).hex()


def paths(lines: list[bytes]) -> list[str]:
    return [entry.parse(line)["req"]["path"] for line in lines]


def segment_names(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("segment-*")}


def segment_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("segment-*"))


# --- durable through the helper ----------------------------------------------------------


def test_batches_become_durable_through_the_helper(tmp_path: Path) -> None:
    async def scenario() -> None:
        with contextlib.closing(open_log(tmp_path)) as log:
            assert log._syncer._proc is None  # started by the first sync, not before
            seqs = await asyncio.gather(*(log.append(request(i)) for i in range(100)))
            assert list(seqs) == list(range(100))
            proc = helper(log)
            assert proc.poll() is None
            assert open_segments(proc.pid) == segment_names(tmp_path)

    run(scenario)
    lines = recovered_lines(tmp_path)
    assert len(lines) == 100
    assert_chain(lines)


def test_helper_reports_a_failed_fdatasync(tmp_path: Path) -> None:
    # fdatasync of a pipe fails (EINVAL): the error comes back, the helper stays.
    async def scenario() -> None:
        results: list[str | None] = []
        reported = asyncio.Event()

        def on_done(error: str | None) -> None:
            results.append(error)
            reported.set()

        syncer = Syncer(str(tmp_path), on_done)
        read_end, write_end = os.pipe()
        try:
            with (tmp_path / "segment").open("wb") as f:
                f.write(b"x\n")
                for fd, generation in ((read_end, 1), (f.fileno(), 2), (f.fileno(), 2)):
                    reported.clear()
                    syncer.sync(fd, generation)
                    assert syncer.in_flight
                    await reported.wait()
                    assert not syncer.in_flight
            assert results == ["fdatasync failed: Invalid argument", None, None]
            assert syncer._proc is not None and syncer._proc.poll() is None
        finally:
            syncer.close()
            os.close(read_end)
            os.close(write_end)

    run(scenario)


def test_helper_that_cannot_start_fails_the_batch_not_the_log(tmp_path: Path) -> None:
    # As a failed fork would: the batch is denied, and the log is not left
    # waiting for an answer that never comes.
    async def scenario() -> None:
        later = tmp_path / "later"  # the helper opens its directory when it starts

        def syncer(_directory: str, on_done: Callable[[str | None], None]) -> Syncer:
            return Syncer(str(later), on_done)

        with contextlib.closing(open_log(tmp_path / "wal", syncer)) as log:
            with pytest.raises(DurabilityError, match="syncer unreachable"):
                await log.append(request(0))
            assert (log.size, log.durable_size, log.refusal) == (0, 0, None)
            later.mkdir()  # the next batch starts a helper
            assert await log.append(request(1)) == 0

    run(scenario)
    assert paths(recovered_lines(tmp_path / "wal")) == ["/r/1"]


# --- segment switch ------------------------------------------------------------------------


def test_segment_switch_hands_the_new_segment_to_the_helper(tmp_path: Path) -> None:
    # A helper still syncing the old segment would acknowledge entries whose
    # segment was never synced.
    async def scenario() -> None:
        with contextlib.closing(open_log(tmp_path, segment_bytes=600)) as log:
            for i in range(30):
                await log.append(request(i))
                newest = max(segment_names(tmp_path))
                assert open_segments(helper(log).pid) == {newest}, f"after entry {i}"
            assert len(segment_names(tmp_path)) > 5

    run(scenario)
    lines = recovered_lines(tmp_path)
    assert len(lines) == 30
    assert_chain(lines)


# --- the helper dies -----------------------------------------------------------------------


@pytest.mark.parametrize("noticed", [True, False], ids=["noticed", "not-yet-noticed"])
def test_helper_killed_while_idle_is_replaced_by_next_append(tmp_path: Path, noticed: bool) -> None:
    # not-yet-noticed: the next append comes before the loop saw the helper's
    # socket close. No batch was in flight, so none may be denied.
    async def scenario() -> None:
        with contextlib.closing(open_log(tmp_path)) as log:
            assert await log.append(request(0)) == 0
            old = helper(log)
            os.kill(old.pid, signal.SIGKILL)
            old.wait(10)
            if noticed:
                await eventually(lambda: log._syncer._proc is None, "helper death noticed")
            assert await log.append(request(1)) == 1
            new = helper(log)
            assert new.pid != old.pid and new.poll() is None
            assert old.returncode == -signal.SIGKILL

    run(scenario)
    lines = recovered_lines(tmp_path)
    assert_chain(lines)
    assert paths(lines) == ["/r/0", "/r/1"]


def test_helper_killed_with_batch_in_flight_denies_the_batch(tmp_path: Path) -> None:
    async def scenario() -> None:
        with contextlib.closing(open_log(tmp_path)) as log:
            assert await log.append(request(0)) == 0
            durable_bytes = segment_bytes(tmp_path)
            old = helper(log)
            # Stopped, the helper takes the request but never answers it.
            os.kill(old.pid, signal.SIGSTOP)
            try:
                seqs = [log.append_nowait(request(i)) for i in range(1, 5)]
                waits = [asyncio.create_task(log.wait_durable(seq)) for seq in seqs]
                await asyncio.sleep(0.1)
                assert not any(w.done() for w in waits)
                assert log.durable_size == 1
            finally:
                os.kill(old.pid, signal.SIGKILL)
            results = await asyncio.gather(*waits, return_exceptions=True)
            # The batch in flight and everything sequenced behind it are denied.
            assert all(isinstance(r, DurabilityError) for r in results), results
            assert all("syncer" in str(r) for r in results), results
            assert segment_bytes(tmp_path) == durable_bytes  # cut back
            assert (log.size, log.durable_size, log.refusal) == (1, 1, None)
            assert old.poll() == -signal.SIGKILL
            # The log goes on from the last durable entry, with a new helper.
            assert await log.append(request(5)) == 1
            assert helper(log).pid != old.pid

    run(scenario)
    lines = recovered_lines(tmp_path)
    assert_chain(lines)
    assert paths(lines) == ["/r/0", "/r/5"]


def test_helper_ignores_termination_signals(tmp_path: Path) -> None:
    # Ctrl-C or SIGTERM to the process group must not take the helper away
    # before the server's last entries (its stop entry) are synced.
    async def scenario() -> None:
        with contextlib.closing(open_log(tmp_path)) as log:
            await log.append(request(0))
            proc = helper(log)
            for sig in (signal.SIGINT, signal.SIGTERM):
                os.kill(proc.pid, sig)
            await asyncio.sleep(0.2)
            assert proc.poll() is None
            assert await log.append(request(1)) == 1
            assert helper(log) is proc

    run(scenario)
    assert len(recovered_lines(tmp_path)) == 2


# --- no helper left behind -----------------------------------------------------------------


def test_no_helper_left_after_close(tmp_path: Path) -> None:
    async def scenario() -> subprocess.Popen[bytes]:
        log = open_log(tmp_path)
        await log.append(request(0))
        proc = helper(log)
        log.close()
        assert log._syncer._proc is None
        return proc

    proc = run(scenario)
    # Exited by itself when the socket closed (not killed), and reaped.
    assert proc.returncode == 0
    assert exited(proc.pid)


def test_no_helper_started_for_a_log_that_never_synced(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = open_log(tmp_path)
        log.close()
        assert log._syncer._proc is None

    run(scenario)


_SERVER_SCRIPT = """
import asyncio, sys
from pathlib import Path
from extproc.log.appender import AuditLog
from extproc.log.wal import WAL

async def main():
    wal = WAL(Path(sys.argv[1]))
    log = AuditLog(wal, wal.recover())
    await log.append({"kind": "request"})
    print(log._syncer._proc.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_helper_exits_when_the_server_is_killed(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert server.stdout is not None
        helper_pid = int(server.stdout.readline())
        assert not exited(helper_pid)
    finally:
        server.kill()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()

    async def gone() -> None:
        await eventually(lambda: exited(helper_pid), "orphaned helper exited")

    run(gone)
    assert len(recovered_lines(tmp_path)) == 1  # acknowledged, so durable
