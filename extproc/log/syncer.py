"""fdatasync in a thread of its own, answered through the event loop's epoll.

The event loop thread writes each group-commit batch into the page cache
itself (a memory copy) and hands the segment to this thread to fdatasync.
The thread runs no Python work beyond the call: it waits on a queue,
fdatasyncs (the GIL released for the whole disk wait) and writes one byte
into a pipe the loop reads like any other socket. So the disk wait never
stalls the loop, and a commit costs two short GIL acquisitions in the
thread instead of a process round trip (measured through Envoy: ~80 us less
server CPU per blocked request than the helper process this replaced, within
~20 us of not syncing at all; docs/PERFORMANCE.md).

Answers on the pipe, one request in flight at a time:
  b"K" (durable) or b"E<errno>\\n" (fdatasync failed)
The thread owns a duplicate of the segment's fd, taken when the segment
changes, so the WAL may close or rotate its own at any time; a new segment's
directory entry is fsync'd before the segment is first synced.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

THREAD_NAME = "wal-fdatasync"  # as profiles and `top -H` show it
_STOP = -1
_SAME = -2  # sync the fd the thread already holds
_JOIN_SECONDS = 5.0


class Syncer:
    """fdatasyncs WAL segments in a thread; reports back on the event loop."""

    def __init__(self, directory: str, on_done: Callable[[str | None], None]) -> None:
        self._directory = directory
        self._on_done = on_done
        self._requests: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._answers = -1  # the loop's end of the pipe
        self._fd_generation = -1
        self.synced_fd = -1  # the thread's duplicate of the segment fd (for tests)
        self.in_flight = False

    def _start(self) -> None:
        dir_fd = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            answers, replies = os.pipe2(os.O_CLOEXEC)
        except OSError:
            os.close(dir_fd)
            raise
        thread = threading.Thread(
            target=self._run, args=(self._requests, dir_fd, replies), name=THREAD_NAME, daemon=True
        )
        try:
            thread.start()
        except RuntimeError as e:  # a process at its thread limit
            for fd in (dir_fd, answers, replies):
                os.close(fd)
            raise OSError(errno.EAGAIN, f"cannot start a thread: {e}") from e
        os.set_blocking(answers, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(answers, self._readable)
        self._answers = answers
        self._thread = thread
        self._fd_generation = -1

    def _run(self, requests: queue.SimpleQueue[int], dir_fd: int, replies: int) -> None:
        """The thread: one fdatasync per request, until _STOP or the pipe closes."""
        fd = -1
        try:
            while (request := requests.get()) != _STOP:
                try:
                    if request != _SAME:  # a new segment, its fd ours to close
                        if fd >= 0:
                            os.close(fd)
                        fd = self.synced_fd = request
                        os.fsync(dir_fd)  # its directory entry
                    os.fdatasync(fd)
                    reply = b"K"
                except OSError as e:
                    reply = b"E%d\n" % (e.errno or errno.EIO)
                try:
                    os.write(replies, reply)
                except OSError:  # the loop's end is closed: nobody to answer
                    break
        finally:
            if fd >= 0:
                os.close(fd)
            os.close(dir_fd)
            os.close(replies)

    def sync(self, fd: int, generation: int) -> None:
        """Request an fdatasync of `fd`; on_done(None | error) follows on the loop."""
        assert not self.in_flight
        self.in_flight = True
        try:
            if self._thread is None:
                self._start()
            if generation != self._fd_generation:
                self._requests.put(os.dup(fd))
                self._fd_generation = generation
            else:
                self._requests.put(_SAME)
        except OSError as e:  # no thread, pipe or fd to be had (EMFILE...)
            self._fail(f"WAL syncer unavailable: {e}")

    def _readable(self) -> None:
        try:
            reply = os.read(self._answers, 64)
        except BlockingIOError:
            return
        if not reply:  # the thread ended (a bug): the next sync starts another
            self._forget_thread()
            self._fail("WAL syncer thread ended")
            return
        if not self.in_flight:
            return
        self.in_flight = False
        if reply.startswith(b"K"):
            self._on_done(None)
        else:
            errno_text = reply[1:].strip().decode(errors="replace")
            self._on_done(f"fdatasync failed: {os.strerror(int(errno_text or errno.EIO))}")

    def _fail(self, reason: str) -> None:
        log.error("%s", reason)
        if self.in_flight:
            self.in_flight = False
            self._on_done(reason)

    def _forget_thread(self) -> None:
        """Stop listening to the thread; it is no longer ours to ask."""
        self._thread = None
        if self._answers >= 0:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._answers)
            os.close(self._answers)  # a thread still syncing finds its answer unwanted
            self._answers = -1
        self._requests = queue.SimpleQueue()

    def close(self) -> None:
        """Stop the thread (after the sync in flight, if any) and release its fds."""
        thread = self._thread
        if thread is None:
            return
        self._requests.put(_STOP)
        thread.join(_JOIN_SECONDS)
        if thread.is_alive():  # a disk that hangs: the daemon thread dies with the process
            log.error("WAL syncer still in fdatasync after %.0f s; not waiting", _JOIN_SECONDS)
        self._forget_thread()
