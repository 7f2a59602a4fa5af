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

Below the proxy: a stack whose server reaches S3 only through the proxy
(FaultyS3Stack) and steady load through Envoy (Load); the scenarios built on
them are in tests/faultscenarios.py.
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
from typing import Any

import grpc

from extproc import processes
from extproc.demo import _WORKLOAD
from extproc.store.s3 import S3Store
from tests.conftest import AuditStack, S3Server, run_cli
from tests.helpers import read_entries

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
