"""What many tests need: a log written by the real writer, and every entry of a log.

Logs are written in-process by the writer itself (WAL, audit log, publisher),
never by a copy of its format; entries are read back through extproc.audit.reader,
the reader every command uses. Also: chained entries without a writer
(make_entries), and scripts that start servers of their own run in a process
group of their own (run_group), so that no test leaves them behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from extproc.audit.reader import entry_lines
from extproc.core import entry, layout
from extproc.core.merkle import leaf_hash
from extproc.core.note import Signer
from extproc.log.appender import AuditLog
from extproc.log.publisher import Publisher, PublisherConfig
from extproc.log.wal import WAL
from extproc.store import open_store
from extproc.store.base import ObjectStore

ORIGIN_PREFIX = "extproc-audit"
T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    """Run an async scenario in a fresh event loop, failing if it hangs."""
    return asyncio.run(asyncio.wait_for(scenario(), timeout))


async def eventually(
    condition: Callable[[], bool], what: str = "condition", within: float = 10.0
) -> None:
    """Wait (polling) until `condition()` holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {within:g} s")
        await asyncio.sleep(0.005)


def write_log(
    store: ObjectStore,
    signer: Signer,
    wal_dir: Path,
    log_id: str,
    *batches: Sequence[dict[str, Any]],
    times: Iterable[float] | None = None,
    writer_id: str = "abcd",
    final: bool = False,
    stop: bool = False,
    signed_at: float | None = None,
    **config: Any,
) -> None:
    """Publish `batches` of entry fields with the real writer, in-process.

    Each batch is appended in order (sequenced at once, made durable together,
    as concurrent requests are), then published. The fields are completed in
    place (v, seq, prev, ts). `times`: the wall clock at each entry, in order
    (default: the real clock); `final`: the last checkpoint is marked final;
    `stop`: then shut down as the server does on SIGTERM (a `writer stop`
    entry under another final checkpoint). `signed_at`: the time every checkpoint's
    `time` line states (default: the real clock). `config`: PublisherConfig options
    (max_age defaults to 0: bundles are cut by size, or when published).
    """
    clock = iter(times) if times is not None else None
    now = [time.time()]

    async def scenario() -> None:
        wal = WAL(wal_dir)
        audit_log = AuditLog(
            wal, wal.recover(), wall_clock=(lambda: now[0]) if clock is not None else time.time
        )
        settings: dict[str, Any] = {"max_age": 0.0, **config}
        cfg = PublisherConfig(log_id, layout.origin_for(ORIGIN_PREFIX, log_id), **settings)
        publisher = Publisher(
            audit_log,
            wal,
            store,
            signer,
            cfg,
            writer_id=writer_id,
            wall_clock=time.time if signed_at is None else _fixed_clock(signed_at),
        )
        await publisher.reconcile()
        for i, batch in enumerate(batches):
            last = None
            for fields in batch:
                if clock is not None:
                    now[0] = next(clock)
                last = audit_log.append_nowait(fields)
            if last is not None:
                await audit_log.wait_durable(last)
            await publisher.publish(final=final and i == len(batches) - 1)
        if stop:
            await publisher.close()
        audit_log.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def _fixed_clock(at: float) -> Callable[[], float]:
    return lambda: at


def _store(store: ObjectStore | str) -> ObjectStore:
    return open_store(store) if isinstance(store, str) else store


def read_lines(store: ObjectStore | str, log_id: str) -> list[bytes]:
    """Every entry of a log, the stored bytes of each line, in seq order."""
    return list(entry_lines(_store(store), log_id))


def read_entries(store: ObjectStore | str, log_id: str) -> list[dict[str, Any]]:
    """Every entry of a log, parsed, in seq order."""
    return [entry.parse(line) for line in entry_lines(_store(store), log_id)]


def tree_bytes(root: Path) -> bytes:
    """The bytes of every regular file under `root`, in path order: never a FIFO,
    a device or a link, and no linked directory followed (a hostile store holds them)."""
    paths = [
        Path(top) / name for top, _, names in os.walk(root, followlinks=False) for name in names
    ]
    return b"".join(p.read_bytes() for p in sorted(paths) if stat.S_ISREG(p.lstat().st_mode))


def make_entries(count: int) -> list[bytes]:
    """Entries as the writer encodes them: chained by prev, seq = position."""
    out: list[bytes] = []
    prev = ""
    for seq in range(count):
        data = entry.encode({"v": 1, "seq": seq, "prev": prev, "kind": "request", "rid": f"r{seq}"})
        out.append(data)
        prev = leaf_hash(data).hex()
    return out


GROUP_GRACE_SECONDS = 20.0  # a server's drain (SIGTERM) ends well within it


def run_group(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a script that starts servers of its own (scripts/attack.py), in a
    process group of its own: a timeout or an interrupted test run (Ctrl-C,
    SIGTERM) ends the whole group, where subprocess.run would SIGKILL only the
    script and leave its Envoys and servers running, orphaned. Output goes to
    files, not pipes: a child left holding them cannot hold up the return."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except BaseException:
            end_group(proc)
            raise
        end_group(proc)  # anything the script left behind
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            argv,
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


def end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to every process of `proc`'s group, SIGKILL to what is left
    after GROUP_GRACE_SECONDS."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group's id

    def alive() -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True

    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + GROUP_GRACE_SECONDS
    while proc.poll() is None or alive():
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait()
            break  # the rest are gone or zombies for init to reap: not ours to wait on
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.1)
