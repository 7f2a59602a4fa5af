"""`serve --workers N`: N writer processes on one port (SO_REUSEPORT).

Python runs one request at a time per process; more cores need more
processes. Each worker is a full writer with its own log id
(`<log id>-w<i>`), its own WAL directory and metrics port, so logs never
share a writer. The kernel spreads incoming connections over the workers, so
Envoy must open several HTTP/2 connections (the shipped config caps streams
per connection for that). The supervisor forwards SIGTERM/SIGINT, restarts a
worker that dies, and exits with the worst worker status.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from extproc.config import ServeConfig
from extproc.server.app import exit_after_serving, serve

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_RESTART_DELAY = 1.0


def worker_config(config: ServeConfig, index: int) -> ServeConfig:
    metrics = config.metrics_listen
    if metrics and metrics != "off":
        host, _, port = metrics.rpartition(":")
        metrics = f"{host}:{int(port) + index}"
    return dataclasses.replace(
        config, log_id=f"{config.log_id}-w{index}", metrics_listen=metrics, reuse_port=True
    )


def _worker_main(config: ServeConfig) -> None:
    # Die with the supervisor: an orphan would hold its WAL lock forever.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [{config.log_id}] %(name)s: %(message)s",
    )
    status = serve(config)
    exit_after_serving(status)
    raise SystemExit(status)


def run_workers(config: ServeConfig, count: int) -> int:
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start(index: int) -> BaseProcess:
        proc = context.Process(
            target=_worker_main, args=(worker_config(config, index),), name=f"worker-{index}"
        )
        proc.start()
        return proc

    workers = {i: start(i) for i in range(count)}

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in workers.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    log.info(
        "started %d workers on %s (log ids %s-w0..w%d)",
        count,
        config.listen,
        config.log_id,
        count - 1,
    )
    status = 0
    while workers:
        for index, proc in list(workers.items()):
            proc.join(0.2)
            if proc.exitcode is None:
                continue
            status = max(status, proc.exitcode if proc.exitcode >= 0 else 1)
            del workers[index]
            if not stopping:
                log.error("worker %d exited with status %s; restarting", index, proc.exitcode)
                time.sleep(_RESTART_DELAY)
                workers[index] = start(index)
    return status
