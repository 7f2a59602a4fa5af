#!/usr/bin/env python3
"""A/B harness for how an enforce request waits for durability.

This process hosts the real ext_proc servicer (server/servicer.py) and the
real appender (log/appender.py: WAL, fdatasync helper process) on a loopback
gRPC port, with no publisher and no Envoy; a client process (grpc.aio, this
script with --client) plays Envoy: one stream per request, request headers,
the reply, its half-close, the end of the stream. Each variant swaps one piece
of the wait, and the variants take turns in every round, so that the load of
this shared machine hits them alike:

    noop         no log at all: replies CONTINUE, waits for the half-close (the floor)
    capture      the audit servicer, entries built but not sequenced or written
    shipped      the appender as shipped: a future per request, woken in order
                 when its group commit is durable
    batch        one future per group commit, resolved once for all its requests
    coalesce     a commit starts at the end of the loop iteration that sequenced
                 its first entry (the requests resumed together share it)
    gather       as coalesce, and it waits up to 0.5 ms more while entries keep coming
    raw          as shipped, replies sent as precomputed bytes (no serializer)
    nosync       as shipped, WAL written but never fdatasync'd (not shippable)
    nowait       the reply does not wait for the disk at all (not shippable)

For each: requests/s at saturation (--concurrency streams, closed loop),
p50/p99 at a fixed --rate, and the server's CPU per request (this process
and its fdatasync helper, /proc), the figure that decides.

    python scripts/bench_wait.py                      # 3 rounds, 5 s per run
    python scripts/bench_wait.py --rounds 5 --variants shipped,batch
    python scripts/bench_wait.py --dir /dev/shm       # WAL on tmpfs
    python scripts/bench_wait.py --loop uvloop        # the server on uvloop (if installed)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hostile_messages import NORMAL_HEADERS
from proc_stats import cpu_seconds, descendants

from extproc.core.redact import RedactionPolicy
from extproc.log.appender import AuditLog
from extproc.log.wal import WAL, Recovered, TreeState
from extproc.server import servicer as servicer_module
from extproc.server.capture import Capturer
from extproc.server.identify import StreamIdentifier
from extproc.server.servicer import AuditServicer
from extproc.trust.policy import ReporterPolicy

VARIANTS = (
    "noop",
    "capture",
    "shipped",
    "batch",
    "coalesce",
    "gather",
    "raw",
    "nosync",
    "nowait",
)
METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


class BatchFutureLog(AuditLog):
    """One future per group commit, awaited by every request in it, resolved
    once (instead of a future per request). Not shippable as is: a waiter
    cancelled while awaiting would cancel the shared future for all."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._futures: dict[int, asyncio.Future[None]] = {}  # by the batch's first seq

    async def wait_durable(self, seq: int) -> None:
        if seq < self.durable_size:
            return
        batch = self._in_flight
        if batch is None or seq >= batch.first + len(batch.lines):
            batch = self._pending
        future = self._futures.get(batch.first)
        if future is None:
            future = self._futures[batch.first] = asyncio.get_running_loop().create_future()
        await future

    def _sync_done(self, error: str | None) -> None:
        batch = self._in_flight
        super()._sync_done(error)
        done = [self._futures.pop(batch.first, None)] if batch is not None else []
        if error is not None:
            done += self._futures.values()
            self._futures.clear()
        for future in done:
            if future is None or future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(RuntimeError(error))


class CoalescingLog(AuditLog):
    """A group commit starts at the end of the loop iteration that sequenced
    its first entry, not at once: the requests read in one iteration share it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scheduled = False
        self._now = False

    def _start_flush(self) -> None:
        if self._now:
            super()._start_flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._scheduled = False
        if self._in_flight is None and self._pending.lines:
            self._now = True
            try:
                super()._start_flush()
            finally:
                self._now = False

    def _sync_done(self, error: str | None) -> None:
        self._now = True
        try:
            super()._sync_done(error)
        finally:
            self._now = False


class GatheringLog(CoalescingLog):
    """As coalesce, and the commit waits one loop iteration more while the
    last one sequenced entries, up to GATHER_MAX seconds after the first."""

    GATHER_MAX = 0.0005

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seen = 0
        self._since = 0.0

    def _start_flush(self) -> None:
        if not self._now and not self._scheduled:
            self._seen = self._size
            self._since = time.perf_counter()
        super()._start_flush()

    def _flush_soon(self) -> None:
        if self._size != self._seen and time.perf_counter() - self._since < self.GATHER_MAX:
            self._seen = self._size
            asyncio.get_running_loop().call_soon(self._flush_soon)
            return
        super()._flush_soon()


class NoWaitLog(AuditLog):
    """Replies before the entry is durable: the cost of the wait itself."""

    async def append(self, fields: dict[str, Any], *, own: bool = False) -> int:
        return self.append_nowait(fields, own=own)


class CaptureOnlyLog(AuditLog):
    """Builds nothing past the servicer's capture: no seq, no encoding, no WAL."""

    async def append(self, fields: dict[str, Any], *, own: bool = False) -> int:
        return 0


class NoopServicer:
    """The floor: the stream's life without the log (the same read, reply and
    wait for the half-close as the audit servicer)."""

    async def Process(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        while (msg := await context.read()) is not grpc.aio.EOF:
            if msg.WhichOneof("request") == "request_headers":
                yield servicer_module._CONTINUE_REQUEST


class Dispatch(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The ext_proc method, handled by the current variant's servicer (looked
    up per call), its replies serialized as usual or passed through as bytes."""

    def __init__(self) -> None:
        self.handler: Any = None

    def use(self, servicer: AuditServicer | NoopServicer, raw: bool) -> None:
        serialize: Callable[[Any], bytes] = (
            (lambda msg: msg) if raw else pb.ProcessingResponse.SerializeToString
        )
        self.handler = grpc.stream_stream_rpc_method_handler(
            servicer.Process,
            request_deserializer=pb.ProcessingRequest.FromString,
            response_serializer=serialize,
        )

    def service(self, details: Any) -> Any:
        return self.handler if details.method == METHOD else None


@dataclass
class Run:
    variant: str
    round: int
    rps: float = 0.0
    requests: int = 0
    cpu_us: float = 0.0  # server CPU per request, saturation
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_us_fixed: float = 0.0
    batch_entries: float = 0.0  # mean entries per group commit at saturation
    notes: list[str] = field(default_factory=list)


def _servicer(variant: str, wal_dir: Path) -> tuple[AuditServicer, AuditLog]:
    cls: Callable[..., AuditLog] = {
        "batch": BatchFutureLog,
        "nowait": NoWaitLog,
        "capture": CaptureOnlyLog,
        "coalesce": CoalescingLog,
        "gather": GatheringLog,
    }.get(variant, AuditLog)
    wal = WAL(wal_dir, sync=variant != "nosync")
    audit_log = cls(wal, Recovered(TreeState()), max_backlog_bytes=1 << 40)
    servicer = AuditServicer(
        audit_log,
        Capturer(RedactionPolicy()),
        identify=StreamIdentifier(ReporterPolicy(allow_unauthenticated=True)),
    )
    return servicer, audit_log


def _raw_replies(on: bool) -> None:
    """Swap the servicer's prebuilt replies for their bytes (or back)."""
    for name in ("_CONTINUE_REQUEST", "_CONTINUE_RESPONSE", "_DENY"):
        current = getattr(servicer_module, name)
        if on and not isinstance(current, bytes):
            setattr(servicer_module, name, current.SerializeToString())
        elif not on and isinstance(current, bytes):
            setattr(servicer_module, name, pb.ProcessingResponse.FromString(current))


def _client(port: int, seconds: float, concurrency: int, rate: int) -> dict[str, Any]:
    args = [sys.executable, __file__, "--client", str(port), "--seconds", str(seconds)]
    args += ["--concurrency", str(concurrency), "--rate", str(rate)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


async def _measure(
    port: int, seconds: float, concurrency: int, rate: int
) -> tuple[dict[str, Any], float]:
    pids = [os.getpid(), *descendants(os.getpid())]
    cpu0 = cpu_seconds(pids)
    result = await asyncio.to_thread(_client, port, seconds, concurrency, rate)
    return result, cpu_seconds([os.getpid(), *descendants(os.getpid())]) - cpu0


async def _run_variant(
    dispatch: Dispatch, port: int, variant: str, rnd: int, args: Any, work: Path
) -> Run:
    servicer, audit_log = _servicer(variant, work / f"wal-{rnd}-{variant}")
    raw = variant == "raw"
    dispatch.use(NoopServicer() if variant == "noop" else servicer, raw)
    _raw_replies(raw)
    run = Run(variant, rnd)
    try:
        await asyncio.to_thread(_client, port, 1, args.concurrency, 0)  # warm-up
        size0, commits0 = audit_log.size, _commits()
        sat, cpu = await _measure(port, args.seconds, args.concurrency, 0)
        run.rps, run.requests = sat["rps"], sat["requests"]
        run.cpu_us = cpu / max(1, sat["requests"]) * 1e6
        commits = _commits() - commits0
        run.batch_entries = (audit_log.size - size0) / commits if commits else 0.0
        fixed, cpu = await _measure(port, args.seconds, args.concurrency, args.rate)
        run.p50_ms, run.p99_ms = fixed["p50_ms"], fixed["p99_ms"]
        run.cpu_us_fixed = cpu / max(1, fixed["requests"]) * 1e6
        run.notes += fixed["errors"] + sat["errors"]
    finally:
        await audit_log.flush()
        audit_log.close()
        _raw_replies(False)
    return run


def _commits() -> float:
    from extproc import metrics

    return sum(
        s.value
        for m in metrics.WAL_BATCH_ENTRIES.collect()
        for s in m.samples
        if s.name.endswith("_count")
    )


async def _serve(args: Any) -> list[Run]:
    dispatch = Dispatch()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((dispatch,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-wait-", dir=args.dir) as tmp:
        for rnd in range(args.rounds):
            # Each round in another order: no variant always follows the same one.
            order = (
                args.variants[rnd % len(args.variants) :]
                + args.variants[: rnd % len(args.variants)]
            )
            for variant in order:
                run = await _run_variant(dispatch, port, variant, rnd, args, Path(tmp))
                print(
                    f"round {rnd + 1} {variant:<12} {run.rps:8.0f} req/s  {run.cpu_us:6.0f} us/req"
                    f"  p50 {run.p50_ms:6.2f}  p99 {run.p99_ms:6.2f} ms  {run.cpu_us_fixed:6.0f}"
                    f" us/req @{args.rate}  {run.batch_entries:5.1f} entries/commit"
                    + (f"  errors: {run.notes[:3]}" if run.notes else ""),
                    flush=True,
                )
                runs.append(run)
    await server.stop(1)
    return runs


def _summary(runs: list[Run], rate: int) -> None:
    print(f"\nmedians over rounds (range); server CPU per request at saturation and at {rate}/s:")
    print(
        f"{'variant':<13}{'req/s':>16}{'us/req':>14}{'p50 ms':>14}{'p99 ms':>16}{'us/req@rate':>16}"
    )
    for variant in dict.fromkeys(r.variant for r in runs):
        mine = [r for r in runs if r.variant == variant]

        def cell(values: list[float], spec: str) -> str:
            return f"{statistics.median(values):{spec}} ({min(values):{spec}}-{max(values):{spec}})"

        print(
            f"{variant:<13}{cell([r.rps for r in mine], '.0f'):>16}"
            f"{cell([r.cpu_us for r in mine], '.0f'):>14}"
            f"{cell([r.p50_ms for r in mine], '.1f'):>14}"
            f"{cell([r.p99_ms for r in mine], '.1f'):>16}"
            f"{cell([r.cpu_us_fixed for r in mine], '.0f'):>16}"
        )


# --- the client (Envoy's part) ---------------------------------------------------------------


def _request() -> Any:
    headers = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in NORMAL_HEADERS.items()]
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(headers=headers), end_of_stream=True
        )
    )


async def _client_main(port: int, seconds: float, concurrency: int, rate: int) -> dict[str, Any]:
    request = _request()
    latencies: list[float] = []
    errors: list[str] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        process = channel.stream_stream(
            METHOD,
            request_serializer=pb.ProcessingRequest.SerializeToString,
            response_deserializer=pb.ProcessingResponse.FromString,
        )
        deadline = time.perf_counter() + seconds
        interval = concurrency / rate if rate else 0.0

        async def worker(index: int) -> None:
            next_at = time.perf_counter() + interval * index / concurrency
            while (now := time.perf_counter()) < deadline:
                if interval:
                    if now < next_at:
                        await asyncio.sleep(next_at - now)
                    next_at += interval
                call = process()
                started = time.perf_counter()
                try:
                    await call.write(request)
                    reply = await call.read()
                    latencies.append(time.perf_counter() - started)
                    if reply.WhichOneof("response") != "request_headers":
                        errors.append(f"reply {reply.WhichOneof('response')}")
                    await call.done_writing()
                    await call.read()  # the end of the stream
                except grpc.aio.AioRpcError as e:
                    errors.append(e.code().name)

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "rps": n / elapsed,
        "p50_ms": latencies[n // 2] * 1000 if n else 0.0,
        "p99_ms": latencies[min(n - 1, n * 99 // 100)] * 1000 if n else 0.0,
        "errors": sorted(set(errors)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each load run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all variants")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="client streams at once")
    parser.add_argument("--rate", type=int, default=1000, help="req/s of the latency runs")
    parser.add_argument("--dir", type=Path, default=None, help="where the WALs go, e.g. /dev/shm")
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the server's event loop"
    )
    parser.add_argument("--client", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client is not None:
        result = asyncio.run(_client_main(args.client, args.seconds, args.concurrency, args.rate))
        print(json.dumps(result))
        return 0
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if args.loop == "uvloop":
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; loop {args.loop}")
    runs = asyncio.run(_serve(args))
    _summary(runs, args.rate)
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
