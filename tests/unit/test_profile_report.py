"""scripts/profile_report.py reads py-spy's collapsed stacks as bench.py
records them (--idle --native --threads --format raw) and says where the event
loop's time went: no figure is asserted, only what each stack is counted as."""

from __future__ import annotations

from pathlib import Path

import profile_report
import pytest

SERVER = 'process 42:"python -m extproc serve --store x"'
HELPER = 'process 43:"python -I -S -c \nimport os\nwhile True:\n    os.fdatasync(fd)\n 9 10"'
LOOP = (
    "_run_module_as_main (<frozen runpy>:198);BaseEventLoop._run_once (asyncio/base_events.py:1922)"
)
GRPC = "0x7f3c048e6cc2 (grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so)"


def _line(thread: str, frames: list[str], count: int, process: str = SERVER) -> str:
    return f"{process};thread (42): {thread};{';'.join(frames)} {count}\n"


PROFILE = "".join(
    [
        _line(
            "MainThread",
            [LOOP, "EpollSelector.select (selectors.py:468)", "epoll_wait (libc.so.6)"],
            5,
        ),
        _line(
            "MainThread",
            [LOOP, "Handle._run (asyncio/events.py:80)", GRPC, "sendmsg (libc.so.6)"],
            4,
        ),
        _line("MainThread", [LOOP, GRPC, "eventfd_write (libc.so.6)", "write (libc.so.6)"], 3),
        _line(
            "MainThread",
            [
                LOOP,
                "AuditServicer.Process (extproc/server/servicer.py:284)",
                GRPC,
                "sendmsg (libc.so.6)",
            ],
            2,
        ),
        _line(
            "MainThread",
            [
                LOOP,
                "AuditServicer.Process (extproc/server/servicer.py:272)",
                "Capturer.request (extproc/server/capture.py:116)",
                "EntryBuilder.headers (extproc/server/builder.py:92)",
            ],
            6,
        ),
        _line(
            "MainThread",
            [
                LOOP,
                "AuditLog._start_flush (extproc/log/appender.py:330)",
                "Syncer._send (extproc/log/syncer.py:121)",
            ],
            1,
        ),
        _line(
            "publish_0",
            [
                "_worker (concurrent/futures/thread.py:81)",
                "PyThread_acquire_lock_timed (libpython3.11.so.1.0)",
            ],
            20,
        ),
        _line("MainThread", ["<module> (<string>:12)", "fdatasync (libc.so.6)"], 7, HELPER),
    ]
)


@pytest.mark.parametrize(
    ("frames", "category"),
    [
        (["EpollSelector.select (selectors.py:468)", "epoll_wait (libc.so.6)"], "idle"),
        ([GRPC, "sendmsg (libc.so.6)"], "grpc: sendmsg"),
        (["AuditServicer.Process (extproc/server/servicer.py:1)", GRPC], "grpc.aio: reads"),
        (
            [
                "AuditServicer.Process (extproc/server/servicer.py:1)",
                "Capturer.request (extproc/server/capture.py:1)",
            ],
            "capture",
        ),
        (["Syncer._readable (extproc/log/syncer.py:126)", "read (libc.so.6)"], "WAL syncer"),
        (["gc_collect_main (libpython3.11.so.1.0)"], "garbage collection"),
        (
            [GRPC, "take_gil (ceval_gil.h:1)", "pthread_cond_timedwait (libc.so.6)"],
            "waits for the GIL",
        ),
    ],
)
def test_loop_stacks_are_counted_where_their_deepest_frame_of_ours_says(
    frames: list[str], category: str
) -> None:
    assert profile_report.loop_category([LOOP, *frames]).startswith(category)


def test_report_splits_threads_and_the_loop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "r0-H-fixed-hey.txt"
    path.write_text(PROFILE)
    stacks = profile_report.records(PROFILE)
    # The helper's multi-line command line does not break its record.
    assert sum(n for _, _, n in stacks) == 48
    profile_report.report(path, requests=10, rate=100)
    out = capsys.readouterr().out
    assert "48 samples" in out
    assert "publish_0" in out and "0%" in out.split("publish_0")[1].split("\n")[0]
    loop = out.split("the event loop's thread")[1]
    assert "idle: the loop waits in epoll_wait" in loop
    # 6 of 21 loop samples in capture, 6 / 100 Hz / 10 requests = 6,000 us each
    capture = next(line for line in loop.splitlines() if line.strip().startswith("capture"))
    assert "28.6%" in capture and capture.rstrip().endswith("6000")
