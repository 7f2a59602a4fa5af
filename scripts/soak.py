#!/usr/bin/env python3
"""Soak: the audit server under steady load through real Envoy, with crashes.

One audit server (enforce mode, local store) behind the venv's Envoy with the
hybrid config of envoy/envoy-compose.yaml (every request access-logged, the
routes under /api held by ext_proc until logged), an upstream app, and a paced
load of the demo's workload for --minutes. Along the way the server is
SIGKILLed and restarted --kills times, --kill-every seconds apart, then once
SIGTERMed under load and restarted (a rollout of one pod); the last process
then runs undisturbed to the end, for the steady-state memory figure. Every --interval it prints:

    t, RSS (MB) and open fds of the server, WAL size, age of the newest
    published checkpoint, requests and their outcome (2xx / 5xx / errors) in
    the interval, and the server's streams_closed_by_peer count.

At the end (a last SIGTERM) it reads the published log back and reports the
losses: a 2xx on an enforced route without its request entry (must be 0:
nothing acknowledged is lost), and a 2xx without its access entry (the
outcome, Envoy's batched stream: lost only where Envoy could not deliver,
shown beside Envoy's logs_written/logs_dropped), and the RSS slope after the
warm-up (MB/min, least squares over the samples past --warmup).

    python scripts/soak.py --minutes 30 --rate 300          # the soak of docs/PERFORMANCE.md
    python scripts/soak.py --minutes 2 --rate 100 --kills 2 --kill-every 30   # a quick look
    python scripts/soak.py --tracemalloc 10                 # also the top allocation growth

`PacedLoad` is the load generator, also used by tests/integration/test_rollout.py.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from extproc import processes
from extproc.core.note import Signer
from extproc.demo import UpstreamApp
from extproc.envoyconf import Endpoint, bootstrap, to_yaml
from extproc.keys import write_signer

# The demo's workload: enforced (/api...) and observed (/healthz, /static) routes.
WORKLOAD = [
    ("GET", "/api/orders?page=2", {"authorization": "Bearer eyJ.x.sig"}),
    ("POST", "/api/orders", {"cookie": "session=abc; theme=dark"}),
    ("GET", "/healthz", {}),
    ("PUT", "/api/users/42", {"x-api-key": "key-42"}),
    ("GET", "/static/app.js", {"user-agent": "soak/1.0"}),
]
ENFORCED = ("/api",)
PEER_CLOSED = "extproc_audit_streams_closed_by_peer_total"


@dataclass
class LoadResult:
    """What the clients saw: statuses, transport errors, and the request id of
    every 2xx by path kind (enforced or only observed)."""

    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    ok_enforced: list[str] = field(default_factory=list)
    ok_observed: list[str] = field(default_factory=list)
    answered_at: dict[str, float] = field(default_factory=dict)  # 2xx rid -> monotonic time

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + self.errors

    @property
    def non_2xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300) + self.errors


class PacedLoad:
    """`threads` keep-alive HTTP clients sending the workload at `rate` req/s in
    all (each paced to rate/threads) to 127.0.0.1:port until stop()."""

    def __init__(self, port: int, rate: float, threads: int = 8) -> None:
        self.port = port
        self.rate = rate
        self.threads = threads
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> PacedLoad:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)
        return self.result

    def snapshot(self) -> tuple[Counter[int], int]:
        with self._lock:
            return Counter(self.result.statuses), self.result.errors

    def _run(self, n: int) -> None:
        period = self.threads / self.rate
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        due = time.monotonic() + period * n / self.threads
        i = n
        while not self._stop.is_set():
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            due = max(due + period, time.monotonic() - 1.0)  # no catch-up burst
            method, path, headers = WORKLOAD[i % len(WORKLOAD)]
            i += 1
            rid = str(uuid.uuid4())
            body = b'{"item":"book"}' if method in ("POST", "PUT") else None
            try:
                conn.request(method, path, body=body, headers={**headers, "x-request-id": rid})
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                with self._lock:
                    self.result.errors += 1
                continue
            with self._lock:
                self.result.statuses[status] += 1
                if 200 <= status < 300:
                    self.result.answered_at[rid] = time.monotonic()
                    kind = path.startswith(ENFORCED)
                    (self.result.ok_enforced if kind else self.result.ok_observed).append(rid)
        conn.close()


# --- the soak -------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def scrape(port: int) -> dict[str, float]:
    """The server's Prometheus metrics, unlabelled sums by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, _, value = line.rpartition(" ")
        name = series.partition("{")[0]
        found[name] = found.get(name, 0.0) + float(value)
    return found


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(v for _, v in samples) / n
    den = sum((t - mx) ** 2 for t, _ in samples)
    return 0.0 if den == 0 else 60 * sum((t - mx) * (v - my) for t, v in samples) / den


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.grpc_port = processes.free_port()
        self.metrics_port = processes.free_port()
        self.health_port = processes.free_port()
        self.envoy_port = processes.free_port()
        self.admin_port = processes.free_port()
        self.store = work / "store"
        self.key = work / "signing.key"
        write_signer(self.key, Signer.generate("soak-audit"))
        self.server: subprocess.Popen[bytes] | None = None
        self.log = (work / "server.log").open("ab")
        self.tracemalloc = args.tracemalloc
        self.event_times: dict[str, float] = {}

    def server_args(self) -> list[str]:
        extra = ["--max-rss-mb", str(self.args.max_rss_mb)] if self.args.max_rss_mb else []
        return [*extra,
            "--store", str(self.store), "--key", str(self.key),
            "--listen", f"127.0.0.1:{self.grpc_port}",
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            "--health-listen", f"127.0.0.1:{self.health_port}",
            "--log-id", "soak", "--wal-dir", str(self.work / "wal"),
            "--access-log-grace", "0.5", "--drain-delay", str(self.args.drain_delay),
            "--allow-no-object-lock",
            # A loopback soak: no reporter authentication (every entry says so).
            "--allow-unauthenticated",
        ]  # fmt: skip

    def start_server(self) -> None:
        env = dict(os.environ)
        if self.tracemalloc:
            env["EXTPROC_AUDIT_TRACEMALLOC"] = str(self.tracemalloc)
        self.server = subprocess.Popen(
            [sys.executable, "-m", "extproc", "serve", *self.server_args()],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        address = f"127.0.0.1:{self.health_port}"
        processes.wait_until(lambda: processes.grpc_serving(address), "audit server", self.server)

    def stop_server(self, sig: int) -> int:
        assert self.server is not None
        status = processes.stop(self.server, sig=sig, timeout=60)
        self.server = None
        return status

    def run(self) -> int:
        with UpstreamApp() as app:
            config = bootstrap(
                listen=Endpoint("127.0.0.1", self.envoy_port),
                ext_proc=Endpoint("127.0.0.1", self.grpc_port),
                upstream=Endpoint("127.0.0.1", app.port),
                admin=Endpoint("127.0.0.1", self.admin_port),
                enforce_prefixes=ENFORCED,
            )
            path = self.work / "envoy.yaml"
            path.write_text(to_yaml(config))
            self.start_server()
            with (self.work / "envoy.log").open("ab") as envoy_log:
                envoy = processes.start_envoy(path, envoy_log)
                try:
                    processes.wait_until(
                        lambda: processes.envoy_ready(self.admin_port), "envoy", envoy
                    )
                    return self._soak()
                finally:
                    if self.server is not None:
                        self.stop_server(signal.SIGKILL)
                    processes.stop(envoy, sig=signal.SIGKILL)

    def _soak(self) -> int:
        args = self.args
        load = PacedLoad(self.envoy_port, args.rate, threads=args.threads).start()
        start = time.monotonic()
        end = start + args.minutes * 60
        # --kills SIGKILLs every --kill-every s, then one SIGTERM under load, then
        # the last process runs undisturbed: its RSS is the steady-state figure.
        schedule = [(start + args.kill_every * (k + 1), "kill") for k in range(args.kills)]
        schedule.append((start + args.kill_every * (args.kills + 1), "term"))
        next_sample = start
        rss: list[tuple[float, float]] = []
        last_statuses: Counter[int] = Counter()
        last_errors = 0
        events: list[str] = []
        event_times: list[float] = []
        kills = sigterms = recycles = 0
        print(
            "   t(s)  rss(MB)  fds  wal(MB)  ckpt_age(s)   sent    2xx   5xx  err  peer_closed  "
            "event"
        )
        while time.monotonic() < end:
            now = time.monotonic()
            event = ""
            if self.server is not None and self.server.poll() is not None:
                # It left on its own (--max-rss-mb): restart it, as the kubelet would.
                status = self.server.returncode
                self.server = None
                self.start_server()
                recycles += 1
                event = f"exited by itself (status {status}: --max-rss-mb), restarted"
            elif schedule and now >= schedule[0][0]:
                _, kind = schedule.pop(0)
                if kind == "term":
                    status = self.stop_server(signal.SIGTERM)
                    sigterms += 1
                    event = f"SIGTERM (exit {status}), restarted"
                else:
                    self.stop_server(signal.SIGKILL)
                    kills += 1
                    event = "SIGKILL, restarted"
                self.start_server()
            if event:
                events.append(f"{now - start:.0f}s {event}")
                event_times.append(now)
                # A restarted process: its RSS series starts again (warm-up).
                rss.append((now - start, float("nan")))
            if now >= next_sample or event:
                next_sample = now + args.interval
                statuses, errors = load.snapshot()
                delta = statuses - last_statuses
                last_statuses, sent_errors = statuses, errors - last_errors
                last_errors = errors
                assert self.server is not None
                pid = self.server.pid
                metrics = scrape(self.metrics_port)
                stamp = metrics.get("extproc_audit_last_checkpoint_timestamp_seconds", 0)
                age = time.time() - stamp if stamp else float("nan")
                mb = rss_mb(pid)
                rss.append((now - start, mb))
                ok = sum(n for s, n in delta.items() if 200 <= s < 300)
                bad = sum(n for s, n in delta.items() if s >= 500)
                print(
                    f"{now - start:7.0f} {mb:8.1f} {open_fds(pid):4d} "
                    f"{dir_bytes(self.work / 'wal') / 1e6:8.1f} {age:12.1f} "
                    f"{sum(delta.values()) + sent_errors:6d} {ok:6d} {bad:5d} {sent_errors:4d} "
                    f"{metrics.get(PEER_CLOSED, 0):12.0f}  {event}",
                    flush=True,
                )
            time.sleep(0.2)
        result = load.stop()
        time.sleep(1.0)  # Envoy's last access-log flush (0.2 s)
        envoy_stats = processes.envoy_stats(self.admin_port, "access_logs.grpc_access_log.")
        status = self.stop_server(signal.SIGTERM)
        self.event_times = dict(zip(events, event_times, strict=True))
        return self._report(result, rss, events, (kills, sigterms, recycles), status, envoy_stats)

    def _report(
        self,
        result: LoadResult,
        rss: list[tuple[float, float]],
        events: list[str],
        counts: tuple[int, int, int],
        status: int,
        envoy_stats: dict[str, int],
    ) -> int:
        from extproc.audit.reader import entry_lines
        from extproc.core import entry

        kills, sigterms, recycles = counts
        from extproc.store import open_store

        entries = [entry.parse(line) for line in entry_lines(open_store(str(self.store)), "soak")]
        requests = {e["rid"] for e in entries if e["kind"] == "request"}
        outcomes = {e.get("rid") for e in entries if e["kind"] == "access"}
        lost_requests = [r for r in result.ok_enforced if r not in requests]
        ok = result.ok_enforced + result.ok_observed
        lost_outcomes = [r for r in ok if r not in outcomes]
        # Where the lost outcomes were: within 5 s of which kill, and on which
        # routes. An observed route answers 2xx with the server down too (its
        # outcome then has nowhere to go: Envoy counts it written, issue 40806);
        # an enforced route's 2xx was admitted by a running server, so a lost
        # outcome there is one the server's own shutdown (or a crash) lost.
        enforced = set(result.ok_enforced)
        lost_near: Counter[str] = Counter()
        for rid in lost_outcomes:
            at = result.answered_at[rid]
            label = min(self.event_times, key=lambda e: abs(self.event_times[e] - at), default="")
            if not label or abs(self.event_times[label] - at) >= 5.0:
                label = "not near any kill"
            lost_near[f"{label}: {'enforced' if rid in enforced else 'observed'}"] += 1
        # The RSS slope of each process's life after its warm-up (a NaN sample
        # marks a restart); the longest such stretch is the steady figure.
        lives: list[list[tuple[float, float]]] = [[]]
        for t, mb in rss:
            if mb != mb:
                lives.append([])
            else:
                lives[-1].append((t, mb))
        stretches = [
            [(t, mb) for t, mb in life if t - life[0][0] >= self.args.warmup]
            for life in lives
            if life
        ]
        stretches = [s for s in stretches if len(s) >= 3]
        steady = max(stretches, key=len, default=[])
        per_life = [
            f"{s[0][0]:.0f}-{s[-1][0]:.0f}s: {s[0][1]:.1f} -> {s[-1][1]:.1f} MB, "
            f"{slope_mb_per_min(s):+.2f} MB/min"
            for s in stretches
        ]
        verify = subprocess.run(
            [sys.executable, "-m", "extproc", "verify", str(self.store),
             "--vkey", self._vkey()],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        summary = {
            "minutes": self.args.minutes,
            "rate": self.args.rate,
            "sent": result.sent,
            "statuses": dict(result.statuses),
            "errors": result.errors,
            "sigkills": kills,
            "sigterms_under_load": sigterms,
            "memory_recycles": recycles,
            "final_sigterm_exit": status,
            "enforced_2xx": len(result.ok_enforced),
            "enforced_2xx_without_request_entry": len(lost_requests),
            "2xx": len(ok),
            "2xx_without_access_entry": len(lost_outcomes),
            "2xx_without_access_entry_by_event": dict(lost_near),
            "envoy_logs_written": envoy_stats.get("access_logs.grpc_access_log.logs_written"),
            "envoy_logs_dropped": envoy_stats.get("access_logs.grpc_access_log.logs_dropped"),
            "entries": len(entries),
            "rss_slope_after_warmup_mb_per_min": round(slope_mb_per_min(steady), 3),
            "rss_steady_window_s": round(steady[-1][0] - steady[0][0]) if steady else 0,
            "rss_per_life_after_warmup": per_life,
            "verify": verify.stdout.strip().splitlines()[:1],
            "events": events,
        }
        print(json.dumps(summary, indent=2))
        tracebacks = len(re.findall(r"Traceback", (self.work / "server.log").read_text()))
        print(f"tracebacks in the server log: {tracebacks}")
        return 0 if not lost_requests and verify.returncode == 0 else 1

    def _vkey(self) -> str:
        from extproc.keys import load_signer

        return load_signer(self.key).verifier().to_text()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--kills", type=int, default=6, help="SIGKILLs, then one SIGTERM")
    parser.add_argument("--kill-every", type=float, default=90.0, help="seconds between them")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds of a process's "
                        "life left out of the RSS slope")  # fmt: skip
    parser.add_argument("--drain-delay", type=float, default=1.0)
    parser.add_argument("--max-rss-mb", type=int, default=0, help="the server's memory bound")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                        help="run the server under tracemalloc (logs the top growth)")  # fmt: skip
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp)")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"soak: {args.minutes:g} min at {args.rate:g} req/s in {work}", flush=True)
    return Soak(args, work).run()


if __name__ == "__main__":
    sys.exit(main())
