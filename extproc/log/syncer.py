"""fdatasync in a helper process.

The event loop thread writes each group-commit batch into the page cache
itself (a memory copy) and asks this helper to fdatasync the segment. The
answer arrives as a readable socket in the loop's own epoll. Neither the disk
wait nor a GIL hand-off to a Python thread ever stalls the loop: measured, a
WAL thread halved the server's throughput (docs/PERFORMANCE.md), this does not.

Protocol on a Unix socketpair, one request in flight at a time:
  parent -> helper  b"S", optionally with a segment fd (SCM_RIGHTS) to switch to
  helper -> parent  b"K" (durable) or b"E<errno>\\n" (fdatasync failed)
The helper ignores SIGINT/SIGTERM and exits, quietly, when the parent's end
closes (also in the middle of a reply: a server that fails to start exits
with a sync in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

# Runs with `python -I -S -c`: no site, no project imports, starts in ~20 ms.
_HELPER = r"""
import os, signal, socket, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sock = socket.socket(fileno=int(sys.argv[1]))
dir_fd = int(sys.argv[2])
fd = -1
while True:
    try:
        msg, fds, _, _ = socket.recv_fds(sock, 16, 1)
    except OSError:
        break
    if not msg:
        break
    try:
        if fds:
            if fd >= 0:
                os.close(fd)
            fd = fds[0]
            os.fsync(dir_fd)  # a new segment's directory entry
        os.fdatasync(fd)
        reply = b"K"
    except OSError as e:
        reply = b"E%d\n" % e.errno
    try:
        sock.sendall(reply)
    except OSError:  # the parent is gone (its end closed): nobody to answer
        break
"""


class Syncer:
    """Asks the helper process to fdatasync; reports back on the event loop."""

    def __init__(self, directory: str, on_done: Callable[[str | None], None]) -> None:
        self._directory = directory
        self._on_done = on_done
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd_generation = -1
        self.in_flight = False

    def _start(self) -> None:
        parent, child = socket.socketpair()
        try:
            dir_fd = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _HELPER, str(child.fileno()), str(dir_fd)],
                    pass_fds=(child.fileno(), dir_fd),
                    stdin=subprocess.DEVNULL,
                )
            finally:
                os.close(dir_fd)
        except OSError:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        self._sock = parent
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(parent.fileno(), self._readable)
        self._fd_generation = -1

    def sync(self, fd: int, generation: int) -> None:
        """Request an fdatasync of `fd`; on_done(None | error) follows on the loop."""
        assert not self.in_flight
        self.in_flight = True
        try:
            try:
                self._send(fd, generation)
            except OSError:
                # The helper died while idle and the loop has not seen its
                # socket close yet: the request reached nobody, so a new
                # helper can take it instead of the batch being failed.
                self._stop()
                self._send(fd, generation)
        except OSError as e:  # no helper can be started or reached
            self._fail(f"WAL syncer unreachable: {e}")

    def _send(self, fd: int, generation: int) -> None:
        if self._sock is None:
            self._start()
        assert self._sock is not None
        if generation != self._fd_generation:
            socket.send_fds(self._sock, [b"S"], [fd])
            self._fd_generation = generation
        else:
            self._sock.send(b"S")

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            reply = self._sock.recv(64)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(f"WAL syncer failed: {e}")
            return
        if not reply:
            self._fail("WAL syncer exited")
            return
        if not self.in_flight:
            return
        self.in_flight = False
        if reply.startswith(b"K"):
            self._on_done(None)
        else:
            errno_text = reply[1:].strip().decode(errors="replace")
            self._on_done(f"fdatasync failed: {os.strerror(int(errno_text or 5))}")

    def _fail(self, reason: str) -> None:
        """The helper is gone: drop it (a new one starts on the next sync)."""
        log.error("%s; starting a new one", reason)
        self._stop()
        if self.in_flight:
            self.in_flight = False
            self._on_done(reason)

    def _stop(self) -> None:
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)  # exits on the closed socket
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def close(self) -> None:
        self._stop()
