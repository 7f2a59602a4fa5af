"""An HTTP proxy between the writer and a real S3 API server that misbehaves on demand.

Point AWS_ENDPOINT_URL at the proxy; it forwards every request to the real
server (moto or LocalStack) unless the current fault says otherwise. Faults
touch object writes (PUT of a key) only, so listing and reading back keep
working, as they do in the partial outages it imitates:

- `slowdown` (a fraction): 503 SlowDown without forwarding
- `error`: 500 InternalError without forwarding
- `delay`: forward after 2-5 s
- `reset` (a fraction): forward, then close the connection before the response
- `blackhole` (a fraction): answer 200 with a plausible ETag, store nothing

Below the proxy, what tests/integration/test_faults.py and scripts/fault_table.py share:
a stack whose server reaches S3 only through the proxy (FaultyS3Stack),
steady load through Envoy (Load), a small volume under the WAL
(small_volume), and one function per scenario that returns what it measured.
"""

from __future__ import annotations

import http.client
import http.server
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from extproc import processes
from extproc.demo import _WORKLOAD
from extproc.store.s3 import S3Store
from tests.conftest import AuditStack, S3Server, run_cli
from tests.helpers import read_entries, read_lines

FAULTS = ("none", "slowdown", "error", "delay", "reset", "blackhole")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass
class FaultCounts:
    forwarded: int = 0
    faulted: dict[str, int] = field(default_factory=dict)


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, seed: int = 7) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.fault = "none"
        self.fraction = 1.0
        self.counts = FaultCounts()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("content-length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._pick(self.command, self.path)
                if fault == "slowdown":
                    return self._fail(503, "SlowDown", "Please reduce your request rate.")
                if fault == "error":
                    return self._fail(500, "InternalError", "We encountered an internal error.")
                if fault == "blackhole":
                    self.send_response(200)
                    self.send_header("ETag", f'"{proxy._random.getrandbits(128):032x}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if fault == "delay":
                    time.sleep(proxy._random.uniform(2.0, 5.0))
                status, headers, data = proxy._forward(self.command, self.path, self.headers, body)
                if fault == "reset":
                    # The write happened; the writer never hears so.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                return None

            def _fail(self, status: int, code: str, message: str) -> None:
                data = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>{message}</Message></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def set(self, fault: str, fraction: float = 1.0) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            self.fault, self.fraction = fault, fraction

    def _pick(self, method: str, path: str) -> str:
        """The fault for this request: object writes only (a PUT of a key, not a bucket)."""
        is_object_write = method == "PUT" and path.strip("/").count("/") >= 1
        with self._lock:
            if not is_object_write or self.fault == "none":
                self.counts.forwarded += 1
                return "none"
            if self._random.random() >= self.fraction:
                self.counts.forwarded += 1
                return "none"
            self.counts.faulted[self.fault] = self.counts.faulted.get(self.fault, 0) + 1
            return self.fault

    def _forward(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            out = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
            conn.request(method, path, body=body or None, headers=out)
            response = conn.getresponse()
            data = response.read()
            return response.status, response.getheaders(), data
        finally:
            conn.close()


# --- driving a real stack through the proxy ------------------------------------------
#
# Shared by tests/integration/test_faults.py and scripts/fault_table.py: an AuditStack
# (real Envoy, real server, enforce mode) whose server reaches S3 only
# through a FaultProxy, steady load through Envoy, and what was measured.


@dataclass(frozen=True)
class Outcome:
    """One request sent through Envoy: when (monotonic), its status (None: no
    HTTP answer) and the x-request-id it carried."""

    start: float
    end: float
    status: int | None
    rid: str

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Load:
    """Requests through Envoy at a steady rate from a few threads, every outcome kept.

    Request i is due at start + i / rate; a worker that falls behind sends at
    once (bounded by the number of workers), as clients of a slow service do.
    """

    def __init__(self, port: int, rate: float, concurrency: int = 4) -> None:
        self.port = port
        self.rate = rate
        self.concurrency = concurrency
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next = 0
        self._t0 = 0.0
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Load:
        self._t0 = time.monotonic()
        for _ in range(self.concurrency):
            thread = threading.Thread(target=self._worker, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        self._threads.clear()
        return self.snapshot()

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def acknowledged(self) -> set[str]:
        """Request ids Envoy answered 2xx: each must be in the published log."""
        return {o.rid for o in self.snapshot() if o.acknowledged}

    def _worker(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            while not self._stop.is_set():
                with self._lock:
                    index = self._next
                    self._next += 1
                wait = self._t0 + index / self.rate - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    return
                method, path, headers = _WORKLOAD[index % len(_WORKLOAD)]
                rid = str(uuid.uuid4())
                body = b'{"item":"book"}' if method in ("POST", "PUT") else None
                start = time.monotonic()
                status: int | None = None
                try:
                    conn.request(method, path, body=body, headers={**headers, "x-request-id": rid})
                    response = conn.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                with self._lock:
                    self.outcomes.append(Outcome(start, time.monotonic(), status, rid))
        finally:
            conn.close()


def refusals_after(outcomes: list[Outcome], since: float) -> tuple[int, float | None, float | None]:
    """Requests sent after `since` and refused (503): their number, when the
    last of them was sent and when the first one succeeded (seconds after `since`)."""
    later = [o for o in outcomes if o.start >= since]
    refused = [o for o in later if o.status == 503]
    ok = [o for o in later if o.acknowledged]
    last = max((o.start for o in refused), default=None)
    first_ok = min((o.end for o in ok), default=None)
    return (
        len(refused),
        None if last is None else last - since,
        None if first_ok is None else first_ok - since,
    )


@contextmanager
def server_env(endpoint: str) -> Iterator[None]:
    """The environment a server started inside inherits: S3 at `endpoint`."""
    names = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
             "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")  # fmt: skip
    saved = {name: os.environ.get(name) for name in names}
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class FaultyS3Stack:
    """An AuditStack (enforce mode) whose server reaches `s3` only through a
    FaultProxy; the test process, `verify` and the reads go to `s3` directly.

    `make` is a stack factory (tests.conftest.stack_factory); the caller
    closes the proxy (a context manager) and the factory closes the stack.
    """

    def __init__(
        self,
        make: Callable[..., AuditStack],
        s3: S3Server,
        *,
        extra_args: Sequence[str] = (),
        log_id: str = "faults",
    ) -> None:
        self.s3 = s3
        self.bucket = s3.new_bucket()
        self.store_url = f"s3://{self.bucket}/mesh"
        self.metrics_port = processes.free_port()
        upstream = urllib.parse.urlsplit(s3.endpoint)
        assert upstream.hostname is not None and upstream.port is not None
        self.proxy = FaultProxy(upstream.hostname, upstream.port)
        self.stack = make(
            self.store_url,
            log_id=log_id,
            extra_args=["--metrics-listen", f"127.0.0.1:{self.metrics_port}", *extra_args],
        )

    def __enter__(self) -> FaultyS3Stack:
        self.proxy.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self.proxy.__exit__()

    def kill(self) -> None:
        """Stop the processes now (SIGKILL): before a volume under them is unmounted."""
        self.stack.kill()

    def start_server(self) -> None:
        with server_env(self.proxy.endpoint):
            self.stack.start_server()

    def start(self) -> FaultyS3Stack:
        self.start_server()
        self.stack.start_envoy()
        return self

    def load(self, rate: float, concurrency: int = 4) -> Load:
        return Load(self.stack.envoy_port, rate, concurrency)

    # --- what the server says -------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus metrics (labels folded: summed per name)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.partition("{")[0]
            values[name] = values.get(name, 0.0) + float(value)
        return values

    def sizes(self) -> tuple[int, int]:
        """(durable entries, entries under the newest confirmed checkpoint)."""
        m = self.metrics()
        return int(m["extproc_audit_log_entries"]), int(m["extproc_audit_published_entries"])

    def wait_published(self, size: int, within: float = 60.0) -> float | None:
        """Seconds until a confirmed checkpoint covers `size` entries (None: not within)."""
        start = time.monotonic()
        while time.monotonic() - start < within:
            if self.sizes()[1] >= size:
                return time.monotonic() - start
            time.sleep(0.05)
        return None

    def wait_caught_up(self, within: float = 60.0) -> float | None:
        """Seconds until everything durable is published (after the access-log flush)."""
        time.sleep(0.6)  # Envoy flushes access logs every 0.2 s; the server takes them
        return self.wait_published(self.sizes()[0], within)

    def alive(self) -> bool:
        server = self.stack.server
        if server is None or server.poll() is not None:
            return False
        try:
            return processes.grpc_serving(f"127.0.0.1:{self.stack.health_port}")
        except grpc.RpcError:
            return False

    def server_log(self) -> str:
        return self.stack.server_log()

    def retry_waits(self) -> list[float]:
        """Every backoff the publisher announced ("retrying in N s")."""
        return [float(m) for m in re.findall(r"retrying in ([0-9.]+)s", self.server_log())]

    # --- what the bucket says ---------------------------------------------------------

    def store(self) -> S3Store:
        return S3Store(self.bucket, "mesh", client=self.s3.s3())

    def published_entries(self) -> list[dict[str, Any]]:
        """Every published entry of the log, read from S3 directly."""
        return read_entries(self.store(), self.stack.log_id)

    def published_request_ids(self) -> set[str]:
        """Request ids of every published `request` entry."""
        return {e["rid"] for e in self.published_entries() if e.get("kind") == "request"}

    def verify(self) -> subprocess.CompletedProcess[str]:
        """The real `extproc-audit verify`, a separate process, against S3 directly."""
        return run_cli("verify", self.store_url, "--vkey", self.stack.vkey(), env=self.s3.env())

    def stop_server(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> tuple[int, float]:
        """Signal the server and wait: (exit status, seconds it took)."""
        proc = self.stack.server
        assert proc is not None
        start = time.monotonic()
        proc.send_signal(sig)
        try:
            status = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = -1000  # did not exit: says so in the result
        self.stack.server = None
        return status, time.monotonic() - start


def verdict_line(verify: subprocess.CompletedProcess[str]) -> str:
    """The verdict line of `verify` ("VALID: ..." / "INVALID: ...") or its error."""
    for line in (verify.stdout + verify.stderr).splitlines():
        if line.startswith(("VALID", "INVALID", "extproc-audit: error")):
            return line
    return (verify.stdout + verify.stderr).strip()[-200:]


# --- the scenarios: one function each, measured ----------------------------------------


@dataclass(frozen=True)
class Fault:
    """A fault row: `fault` on `fraction` of object PUTs for `seconds`, then healed."""

    name: str
    fault: str
    fraction: float = 1.0
    extra_args: tuple[str, ...] = ()


FAULT_ROWS = {
    "slowdown": Fault("503 SlowDown on 50% of PUTs", "slowdown", 0.5),
    "error": Fault("500 on every PUT", "error"),
    "delay": Fault("2-5 s delay on every PUT", "delay"),
    "reset": Fault("connection closed mid-response, 30%", "reset", 0.3),
    "blackhole": Fault("200 returned, object never stored, 30% of PUTs", "blackhole", 0.3),
    "backlog": Fault(
        "backlog bound 200 KB + 500 outage", "error", extra_args=("--max-backlog-bytes", "200000")
    ),
}


@dataclass
class Measured:
    """What one scenario measured (None where it does not apply or never happened)."""

    acknowledged: int = 0
    sent: int = 0
    statuses: dict[int | None, int] = field(default_factory=dict)  # None: no HTTP answer
    # Envoy's ext_proc failures (message_timeouts, streams_failed, ...): a 504
    # is a reply the server did not send within the filter's message timeout.
    envoy_ext_proc: dict[str, int] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)
    refused_during: int = 0
    refused_after_heal: int = 0
    last_refusal_after_heal: float | None = None
    first_success_after_heal: float | None = None
    catch_up: float | None = None  # seconds from heal to a checkpoint over everything durable
    max_retry_wait: float | None = None
    faulted: dict[str, int] = field(default_factory=dict)
    repaired: int = 0
    alive_after: bool = False
    exit_status: int | None = None  # the clean stop (SIGTERM) at the end
    exit_seconds: float | None = None
    # SIGTERM during the outage (run_sigterm): status, seconds to exit, the reason logged.
    drain_status: int | None = None
    drain_seconds: float | None = None
    drain_reason: str = ""
    verify_status: int | None = None
    verify_verdict: str = ""
    verify_output: str = ""
    gaps: list[str] = field(default_factory=list)
    writer_events: list[str] = field(default_factory=list)  # published `writer` entries, in order
    notes: list[str] = field(default_factory=list)


_EXT_PROC_ROUTINE = {
    "streams_started",
    "stream_msgs_sent",
    "stream_msgs_received",
    "streams_closed",
    "server_half_closed",
    "immediate_responses_sent",
}


def _finish(run: FaultyS3Stack, load: Load, result: Measured) -> None:
    """Everything acknowledged in the bucket, a clean stop, the independent verifier."""
    outcomes = load.snapshot()
    acknowledged = {o.rid for o in outcomes if o.acknowledged}
    result.sent = len(outcomes)
    for o in outcomes:
        result.statuses[o.status] = result.statuses.get(o.status, 0) + 1
    result.acknowledged = len(acknowledged)
    # Before the clean stop: caught up means in the bucket, without the final publication.
    result.lost = acknowledged - run.published_request_ids()
    result.faulted = dict(run.proxy.counts.faulted)
    if run.stack.envoy is not None:
        for name, value in processes.envoy_stats(run.stack.admin_port, "http.").items():
            short = name.rpartition("ext_proc.")[2]
            if "ext_proc." in name and value and short not in _EXT_PROC_ROUTINE:
                result.envoy_ext_proc[short] = result.envoy_ext_proc.get(short, 0) + value
    result.repaired = int(run.metrics().get("extproc_audit_objects_repaired_total", 0))
    waits = run.retry_waits()
    result.max_retry_wait = max(waits) if waits else None
    result.exit_status, result.exit_seconds = run.stop_server()
    entries = run.published_entries()
    result.writer_events = [str(e.get("event")) for e in entries if e.get("kind") == "writer"]
    verify = run.verify()
    result.verify_status = verify.returncode
    result.verify_verdict = verdict_line(verify)
    result.verify_output = verify.stdout + verify.stderr
    result.gaps = [line.strip() for line in verify.stdout.splitlines() if "gap:" in line]


def run_fault(
    make: Callable[..., AuditStack],
    s3: S3Server,
    row: Fault,
    *,
    seconds: float,
    rate: float = 60.0,
    warmup: float = 1.0,
    after: float = 3.0,
) -> Measured:
    """Load through Envoy; `row`'s fault for `seconds`; heal; keep the load for
    `after` seconds; wait until everything is published; check it all."""
    result = Measured()
    with FaultyS3Stack(make, s3, extra_args=row.extra_args) as run:
        run.start()
        with run.load(rate) as load:
            time.sleep(warmup)
            cut = time.monotonic()
            run.proxy.set(row.fault, row.fraction)
            time.sleep(seconds)
            run.proxy.set("none")
            healed = time.monotonic()
            durable_at_heal = run.sizes()[0]
            result.catch_up = run.wait_published(durable_at_heal)
            time.sleep(max(0.0, after - (time.monotonic() - healed)))
        outcomes = load.snapshot()
        result.refused_during = sum(
            1 for o in outcomes if cut <= o.start < healed and o.status == 503
        )
        (
            result.refused_after_heal,
            result.last_refusal_after_heal,
            result.first_success_after_heal,
        ) = refusals_after(outcomes, healed)
        result.alive_after = run.alive()
        if run.wait_caught_up() is None:
            result.notes.append("not caught up 60 s after the load stopped")
        _finish(run, load, result)
    return result


def run_sigterm(
    make: Callable[..., AuditStack],
    s3: S3Server,
    *,
    seconds: float,
    drain_timeout: float = 6.0,
    rate: float = 60.0,
) -> Measured:
    """SIGTERM while every PUT fails: how long the drain takes, its exit status
    and reason; then a restart on the same WAL after the store heals."""
    result = Measured()
    with FaultyS3Stack(make, s3, extra_args=("--drain-timeout", str(drain_timeout))) as run:
        run.start()
        with run.load(rate) as load:
            time.sleep(1.0)
            run.proxy.set("error")
            time.sleep(seconds)
        log_before = len(run.server_log())
        result.drain_status, result.drain_seconds = run.stop_server()
        shutdown_log = run.server_log()[log_before:]
        reason = re.search(r"final publication incomplete \((.*)\): \d+ entries stay", shutdown_log)
        result.drain_reason = reason.group(1) if reason else ""
        result.faulted = dict(run.proxy.counts.faulted)
        run.proxy.set("none")
        run.start_server()  # same WAL: what the drain could not publish goes now
        result.catch_up = run.wait_caught_up()  # here: from the restart
        if result.catch_up is None:
            result.notes.append("restart did not publish within 60 s")
        result.alive_after = run.alive()
        _finish(run, load, result)
    return result


def run_kill9(
    make: Callable[..., AuditStack], s3: S3Server, *, seconds: float, rate: float = 60.0
) -> Measured:
    """kill -9 during a 500 outage, under load; the store heals; restart, same WAL."""
    result = Measured()
    with FaultyS3Stack(make, s3) as run:
        run.start()
        with run.load(rate) as load:
            time.sleep(1.0)
            run.proxy.set("error")
            time.sleep(seconds)
            run.stop_server(signal.SIGKILL)
            time.sleep(1.0)  # refused (no ext_proc server) while it is down
        run.proxy.set("none")
        run.start_server()
        with run.load(rate) as load2:
            time.sleep(2.0)
        load.outcomes.extend(load2.snapshot())
        result.catch_up = run.wait_caught_up()  # here: from the end of the load after restart
        if result.catch_up is None:
            result.notes.append("restart did not publish within 60 s")
        result.alive_after = run.alive()
        _finish(run, load, result)
    return result


# --- a full disk under the WAL ------------------------------------------------------


class VolumeUnavailable(Exception):
    """A small file system could not be mounted here (not root, no loop devices)."""


VOLUME_KINDS = ("tmpfs", "ext4")
VOLUME_BYTES = 3 << 20


@contextmanager
def small_volume(path: Path, kind: str, size_kib: int = VOLUME_BYTES >> 10) -> Iterator[Path]:
    """A file system of `size_kib` mounted at `path` for the duration: tmpfs, or
    ext4 on a loop device (block allocation, delayed allocation, fdatasync on a
    real file system driver). Unmounted on exit, lazily if still busy."""
    path.mkdir(parents=True, exist_ok=True)
    if kind == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(path)]
    elif kind == "ext4":
        image = path.with_name(path.name + ".img")
        with image.open("wb") as f:
            f.truncate(size_kib * 1024)
        mkfs = subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", str(image)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mkfs.returncode:
            raise VolumeUnavailable(f"mkfs.ext4 failed: {mkfs.stderr.strip()}")
        command = ["mount", "-o", "loop", str(image), str(path)]
    else:
        raise ValueError(f"unknown volume kind {kind!r}")
    try:
        mount = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as e:
        raise VolumeUnavailable(f"{command[0]}: {e}") from e
    if mount.returncode:
        raise VolumeUnavailable(f"{' '.join(command)}: {mount.stderr.strip()}")
    try:
        yield path
    finally:
        umount = subprocess.run(["umount", str(path)], capture_output=True, check=False)
        if umount.returncode:  # a helper process still closing its files
            time.sleep(1.0)
            if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@dataclass
class DiskMeasured(Measured):
    volume: str = ""
    seconds_to_full: float | None = None
    denied_while_full: int = 0
    full_seconds: float = 0.0
    used_full: int = 0
    used_after: int = 0
    error_lines_while_full: int = 0
    denial_lines_while_full: int = 0
    recovered_after: float | None = None  # seconds from heal to the first 2xx
    # Once recovered, load goes on until more entries than the free space
    # were written: `later` requests, `ok_after_recovery` of them acknowledged.
    ok_after_recovery: int = 0
    later: int = 0
    later_bytes: int = 0  # bytes of the entries logged in that time
    wal_files: dict[str, int] = field(default_factory=dict)  # name: bytes, after catching up


_ERROR_LINE = re.compile(r"^\S+ \S+ ERROR ", re.MULTILINE)


def run_full_disk(
    make: Callable[..., AuditStack],
    s3: S3Server,
    *,
    kind: str,
    base: Path,
    rate: float = 150.0,
    full_for: float = 4.0,
    recover_within: float = 45.0,
) -> DiskMeasured:
    """The WAL on a 3 MiB volume, S3 cut (500 on every PUT) so nothing is
    published; load through Envoy until the disk is full and for `full_for`
    seconds more; then S3 heals and the same server must recover, no restart.

    The volume is mounted under `base`. Raises VolumeUnavailable when it
    cannot be mounted."""
    result = DiskMeasured(volume=kind)
    # Unmounted after `run` has killed the processes that hold it open.
    with (
        small_volume(base / f"wal-{kind}", kind) as volume,
        FaultyS3Stack(make, s3, extra_args=("--wal-dir", str(volume))) as run,
    ):
        run.start()
        warm = run.load(20.0, 2).start()
        time.sleep(1.0)
        warm.stop()
        run.wait_caught_up()
        run.proxy.set("error")
        cut = time.monotonic()
        with run.load(rate, 6) as load:
            full_at = None
            while time.monotonic() - cut < 90:
                if any(o.status == 503 and o.start >= cut for o in load.snapshot()):
                    full_at = time.monotonic()
                    break
                time.sleep(0.1)
            if full_at is None:
                raise AssertionError(f"the {kind} volume never filled: {load.snapshot()[-1:]}")
            result.seconds_to_full = full_at - cut
            log_at_full = len(run.server_log())
            time.sleep(full_for)
            result.full_seconds = time.monotonic() - full_at
            result.used_full = used_bytes(volume)
            full_log = run.server_log()[log_at_full:]
            result.error_lines_while_full = len(_ERROR_LINE.findall(full_log))
            result.denial_lines_while_full = len(
                re.findall(r"WAL commit failed|denying request", full_log)
            )
            result.denied_while_full = sum(
                1 for o in load.snapshot() if o.start >= full_at and o.status == 503
            )
            result.alive_after = run.alive()
            run.proxy.set("none")
            healed = time.monotonic()
            while time.monotonic() - healed < recover_within:
                if any(o.acknowledged and o.start >= healed for o in load.snapshot()):
                    break
                time.sleep(0.1)
            time.sleep(2.0)  # the load goes on: recovered for good, or not
        outcomes = load.snapshot()
        (
            result.refused_after_heal,
            result.last_refusal_after_heal,
            result.first_success_after_heal,
        ) = refusals_after(outcomes, healed)
        result.recovered_after = result.first_success_after_heal
        result.catch_up = run.wait_caught_up(within=30.0)
        result.used_after = used_bytes(volume)
        result.wal_files = {p.name: p.stat().st_size for p in sorted(volume.glob("*/*"))}
        load.outcomes = [*outcomes, *warm.snapshot()]
        if result.recovered_after is not None:
            # Recovered for good: more entries than the free space left (were
            # published segments kept, the disk would fill again) go through
            # without a refusal. Entries are ~750 bytes (counted exactly below).
            first_later, target = run.sizes()[0], free_bytes(volume) * 1.2
            with run.load(rate, 6) as later:
                started = time.monotonic()
                while time.monotonic() - started < 60:
                    if (run.sizes()[0] - first_later) * 750 > target:
                        break
                    if any(o.status == 503 for o in later.snapshot()):
                        time.sleep(1.0)  # refused again: measured, no need to go on
                        break
                    time.sleep(0.25)
            # Refused again: the disk is full again and may stay so; wait less.
            refused_again = any(o.status == 503 for o in later.snapshot())
            run.wait_caught_up(within=5.0 if refused_again else 30.0)
            lines = read_lines(run.store(), run.stack.log_id)
            result.later_bytes = sum(len(line) + 1 for line in lines[first_later:])
            result.later = len(later.outcomes)
            result.ok_after_recovery = sum(1 for o in later.outcomes if o.acknowledged)
            load.outcomes += later.snapshot()
        result.alive_after = result.alive_after and run.alive()
        if result.ok_after_recovery < result.later or result.recovered_after is None:
            patience = 5.0  # not recovered for good: publication may be stuck
        else:
            patience = 30.0
        if run.wait_caught_up(within=patience) is None:
            result.notes.append(f"not caught up {patience:g} s after the load stopped")
        _finish(run, load, result)
    return result
