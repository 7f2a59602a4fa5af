"""`extproc-audit demo`: the whole pipeline on one machine, end to end.

Starts a small upstream app, the audit server, and a real Envoy in front of
the app with the ext_proc filter; sends real HTTP requests through Envoy;
stops the server with SIGTERM (final checkpoint); verifies the published log
and prints what happened.

Envoy reaches the server over a Unix socket (`serve --listen unix:PATH`), so
every entry names an authenticated reporter (`reporter.auth: unix`): only a
process that can open the socket, in a directory only the demo's user can
enter, can write entries. No `--allow-unauthenticated`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extproc import processes
from extproc.audit.reader import entry_lines
from extproc.audit.verify import verify_store
from extproc.core.fields import (
    AUTH,
    HEADERS,
    ID,
    KIND,
    KIND_ACCESS,
    KIND_REQUEST,
    REPORTER,
    REQ,
    RID,
    nested,
)
from extproc.core.findings import LogReport, all_ok
from extproc.core.note import Signer
from extproc.envoyconf import Endpoint, SocketPath, bootstrap, to_yaml
from extproc.errors import ConfigError
from extproc.keys import load_signer, write_signer
from extproc.store import open_store, parse_store_url

DEMO_LOG_ID = "demo"
DEMO_REDIRECT = "https://client.example/cb?code=demo-oauth-code-S1#access_token=demo-token-S2"
DEMO_KEY_NAME = "extproc-audit-demo"
_MAX_SOCKET_PATH = 100  # a Unix socket path fits in sun_path (108 bytes on Linux)


class _AppServer(http.server.ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: a burst of Envoy's new upstream
    # connections overflows it, and the dropped SYNs cost a 1 s connect timeout (503 UF).
    request_queue_size = 1024


class UpstreamApp:
    """A tiny HTTP app behind Envoy that counts what actually reached it."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.request_ids: list[str] = []
        self._lock = threading.Lock()
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                with app._lock:
                    app.received[self.command] += 1
                    app.request_ids.append(self.headers.get("x-request-id", ""))
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                body = b'{"ok":true}\n'
                if self.path.startswith("/login"):
                    # An OAuth-style redirect: the code and the token ride in the
                    # Location header, which the log must not keep.
                    self.send_response(302)
                    self.send_header("location", DEMO_REDIRECT)
                else:
                    self.send_response(201 if self.command == "POST" else 200)
                self.send_header("content-type", "application/json")
                self.send_header("set-cookie", "session=s3cr3t-session; Path=/; HttpOnly")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _AppServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def total(self) -> int:
        return sum(self.received.values())

    def __enter__(self) -> UpstreamApp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# A small, varied workload: who calls what, with which credentials.
_WORKLOAD = [
    ("GET", "/api/orders?page=2&token=tok-SECRET-1", {"authorization": "Bearer eyJ.SECRET.sig"}),
    ("POST", "/api/orders", {"cookie": "session=SECRET-cookie; theme=dark"}),
    ("GET", "/healthz", {}),
    ("PUT", "/api/users/42", {"x-api-key": "key-SECRET-42"}),
    ("DELETE", "/api/users/42?reason=gdpr", {"authorization": "Basic dXNlcjpwYXNz"}),
    ("GET", "/static/app.js", {"user-agent": "demo-browser/1.0"}),
]


@dataclass
class ClientResult:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    request_ids: list[str] = field(default_factory=list)


def send_requests(port: int, count: int, concurrency: int) -> ClientResult:
    result = ClientResult()
    lock = threading.Lock()

    def worker(indices: range) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for i in indices:
            method, path, headers = _WORKLOAD[i % len(_WORKLOAD)]
            rid = str(uuid.uuid4())
            body = b'{"item":"book"}' if method in ("POST", "PUT") else None
            try:
                conn.request(method, path, body=body, headers={**headers, "x-request-id": rid})
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                with lock:
                    result.errors += 1
                continue
            with lock:
                result.statuses[status] += 1
                if 200 <= status < 300:
                    result.request_ids.append(rid)
        conn.close()

    workers = max(1, min(concurrency, count))
    with ThreadPoolExecutor(workers) as pool:
        for w in range(workers):
            pool.submit(worker, range(w, count, workers))
    return result


def _ensure_key(workdir: Path) -> Signer:
    key_path = workdir / "signing.key"
    if not key_path.exists():
        write_signer(key_path, Signer.generate(DEMO_KEY_NAME))
    return load_signer(key_path)


def _prepare_workdir(workdir: Path) -> Path:
    """The work directory, absolute and created; a ConfigError if it cannot be."""
    workdir = workdir.absolute()
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"demo work directory {workdir} exists and is not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the demo work directory {workdir}: {e.strerror}") from e
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise ConfigError(f"demo work directory {workdir} is not writable")
    return workdir


def _store_identity(store_url: str) -> str:
    """One name per store: a normalized URL, and for S3 the endpoint it is on."""
    parsed = parse_store_url(store_url)
    if parsed.bucket is not None:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return f"s3://{parsed.bucket}/{parsed.prefix} at {endpoint or 'AWS'}"
    assert parsed.path is not None
    return str(parsed.path.resolve())


def _wal_dir(workdir: Path, store_url: str) -> Path:
    """The demo's WAL for this store: a WAL records what it published to one
    store, so each store the demo is pointed at gets its own (the default
    store keeps `<workdir>/wal`)."""
    identity = _store_identity(store_url)
    if identity == str((workdir / "store").resolve()):
        return workdir / "wal"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", identity.split(" at ")[0]).strip("-.")[-48:]
    digest = hashlib.sha256(identity.encode()).hexdigest()[:8]
    return workdir / "wal-stores" / f"{slug}-{digest}"


def _check_bucket(store_url: str) -> None:
    """A demo bucket: created with Object Lock if missing, refused without it."""
    from extproc.store.s3 import S3Store

    store = open_store(store_url)
    assert isinstance(store, S3Store)
    if not store.bucket_exists():
        store.create_locked_bucket("GOVERNANCE", 1)
        print(f"created bucket {store.bucket} with Object Lock (GOVERNANCE, 1 day)")
    elif store.lock_configuration() is None:
        raise ConfigError(
            f"bucket {store.bucket} has no Object Lock, which the audit server requires: give "
            "the demo a bucket name that does not exist yet (it creates it with Object Lock) "
            "or one made by `extproc-audit init-bucket`"
        )


class _ProcessFailed(Exception):
    """The audit server or Envoy did not start or did not end cleanly."""

    def __init__(self, what: str, log: Path, reason: str, wal: Path | None = None) -> None:
        super().__init__(what)
        self.what, self.log, self.reason, self.wal = what, log, reason, wal

    def to_error(self, cwd: Path) -> ConfigError:
        line = _last_error_line(self.log)
        where = f"its log: {_shown_path(self.log, cwd)}"
        if self.wal is not None:
            where += f", its WAL for this store: {_shown_path(self.wal, cwd)}"
        return ConfigError(f"{self.what} {self.reason}: {line or 'no error in its log'} ({where})")


_ERROR_LINE = re.compile(r"(?:extproc-audit: (?:error|invalid): |\sERROR\s|\[(?:error|critical)\])")


def _last_error_line(log: Path) -> str | None:
    """The last error line of a server or Envoy log, without its prefix."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        match = _ERROR_LINE.search(line)
        if match is not None:
            return line[match.end() :].strip()[:1000]
    return None


def _shown_path(path: Path, cwd: Path) -> str:
    """`path` as the user would type it from `cwd`: relative below it, else absolute."""
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)


def command_name(cwd: Path | None = None) -> str:
    """How to run extproc-audit, as printed, from `cwd`: the bare name if it is
    the one on PATH, else the path of the running script (a venv not on PATH,
    e.g. `.venv/bin/extproc-audit`), else `python -m extproc`."""
    cwd = cwd or Path.cwd()
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    script = argv0 if argv0.name == "extproc-audit" else Path(sys.executable).parent / argv0.name
    if script.name != "extproc-audit":
        script = Path(sys.executable).parent / "extproc-audit"
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m extproc"
    on_path = shutil.which("extproc-audit")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return "extproc-audit"
    shown = _shown_path(script.absolute(), cwd)
    if "/" not in shown:
        shown = f"./{shown}"
    return shlex.quote(shown)


@dataclass
class RunEntries:
    """This run's entries in the demo log (by the request ids it sent)."""

    kinds: Counter[str] = field(default_factory=Counter)
    sample: dict[str, Any] | None = None
    reporters: Counter[str] = field(default_factory=Counter)  # "auth id" -> entries


def _run_entries(store_url: str, request_ids: list[str], sample_kind: str) -> RunEntries:
    wanted = set(request_ids)
    found = RunEntries()
    for line in entry_lines(open_store(store_url), DEMO_LOG_ID):
        fields: dict[str, Any] = json.loads(line)
        if fields.get(RID) not in wanted:
            continue
        kind = str(fields.get(KIND))
        found.kinds[kind] += 1
        reporter = fields.get(REPORTER) or {}
        found.reporters[f"{reporter.get(AUTH)} {reporter.get(ID, '')}".strip()] += 1
        headers = nested(fields, REQ, HEADERS) or {}
        if found.sample is None and kind == sample_kind and headers.get("authorization"):
            found.sample = fields
    return found


@contextlib.contextmanager
def _socket_path(workdir: Path) -> Iterator[Path]:
    """Where the server listens: in the workdir, so the reporter keeps its name
    from run to run, or in a private temporary directory where that path is
    too long for a socket."""
    socket = workdir / "audit.sock"
    if len(str(socket)) <= _MAX_SOCKET_PATH:
        yield socket
        return
    with tempfile.TemporaryDirectory(prefix="extproc-demo-") as private:
        yield Path(private) / "audit.sock"


def _describe_run(mode: str, kinds: Counter[str]) -> str:
    if mode == "enforce":
        return (
            f"{kinds['request']} request entries (each request held by ext_proc until its "
            f"entry was durable) and {kinds['access']} access entries (their outcomes, from "
            "Envoy's access-log stream), plus the writer's start and stop entries"
        )
    return (
        f"{kinds['access']} access entries (one per request with its outcome, from Envoy's "
        "access-log stream after the response: no request waited for the log), plus the "
        "writer's start and stop entries"
    )


def run_demo(
    *, requests: int, store_url: str | None, workdir: Path, mode: str, concurrency: int
) -> int:
    if requests < 1:
        raise ConfigError("--requests must be at least 1")
    cwd = Path.cwd()
    workdir = _prepare_workdir(workdir)
    signer = _ensure_key(workdir)
    store_url = _demo_store_url(workdir, store_url)
    wal_dir = _wal_dir(workdir, store_url)
    if mode == "enforce":
        how = "ext_proc holds each request until its entry is durable; its outcome follows "
        how += "by the access-log stream"
    else:
        how = "nothing waits; each request is logged after its response, from Envoy's "
        how += "access-log stream"
    print(f"demo: {requests} requests through Envoy -> audit server ({mode} mode: {how})")
    started = time.monotonic()
    try:
        traffic = _send_through_envoy(workdir, store_url, wal_dir, mode, requests, concurrency)
    except _ProcessFailed as failed:
        raise failed.to_error(cwd) from None
    store = open_store(store_url)
    reports, general = verify_store(store, signer.verifier())
    ok = all_ok(reports, general)
    demo_report = next((r for r in reports if r.log_id == DEMO_LOG_ID), None)
    sample_kind = KIND_REQUEST if mode == "enforce" else KIND_ACCESS
    this_run = _run_entries(store_url, traffic.result.request_ids, sample_kind)
    elapsed = time.monotonic() - started
    _print_counts(traffic, requests, elapsed, mode, demo_report, this_run)
    for finding in general + [f for r in reports for f in r.findings]:
        print(f"  {finding}")
    print(f"verification         {'VALID' if ok else 'INVALID'}")
    print(f"log location         {store.url}")
    print(f"WAL                  {_shown_path(wal_dir / DEMO_LOG_ID, cwd)}")
    print(f"verifier key         {signer.verifier().to_text()}")
    print()
    _print_how_to_verify(store.url, signer.verifier().to_text(), this_run, mode, workdir, cwd)
    return 0 if ok else 1


def _demo_store_url(workdir: Path, store_url: str | None) -> str:
    """The store the demo writes: <workdir>/store by default; a bucket is checked
    (and created with Object Lock if missing); a directory made absolute."""
    if store_url is None:
        return str(workdir / "store")
    if parse_store_url(store_url).is_s3:
        _check_bucket(store_url)
        return store_url
    local = parse_store_url(store_url).path
    assert local is not None
    return str(local.absolute())


@dataclass
class _Traffic:
    """What went through Envoy: the client's view, the app's count, Envoy's stats."""

    result: ClientResult
    reached_app: int
    stats: dict[str, int]


def _send_through_envoy(
    workdir: Path, store_url: str, wal_dir: Path, mode: str, requests: int, concurrency: int
) -> _Traffic:
    """Start the app, the audit server and Envoy; send the requests through Envoy;
    stop Envoy and the server (its final checkpoint). _ProcessFailed if one of
    them did not start or the server did not exit cleanly."""
    metrics_port = processes.free_port()
    envoy_port, admin_port = processes.free_port(), processes.free_port()
    server_args = [
        "--store",
        store_url,
        "--key",
        str(workdir / "signing.key"),
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--log-id",
        DEMO_LOG_ID,
        "--wal-dir",
        str(wal_dir),
        "--mode",
        mode,
    ]
    server_log_path, envoy_log_path = workdir / "server.log", workdir / "envoy.log"
    with (
        UpstreamApp() as app,
        server_log_path.open("wb") as server_log,
        envoy_log_path.open("wb") as envoy_log,
        _socket_path(workdir) as socket,
    ):
        server_args += ["--listen", f"unix:{socket}"]
        config = bootstrap(
            listen=Endpoint("127.0.0.1", envoy_port),
            ext_proc=SocketPath(str(socket)),
            upstream=Endpoint("127.0.0.1", app.port),
            admin=Endpoint("127.0.0.1", admin_port),
            mode=mode,
        )
        envoy_config = workdir / "envoy.yaml"
        envoy_config.write_text(to_yaml(config))
        server = processes.start_server(server_args, server_log)
        envoy = None
        try:
            try:
                processes.wait_until(lambda: processes.grpc_serving(f"unix:{socket}"), "", server)
            except (RuntimeError, TimeoutError) as e:
                reason = "exited" if server.poll() is not None else "did not start"
                raise _ProcessFailed(
                    "the audit server", server_log_path, reason, wal_dir / DEMO_LOG_ID
                ) from e
            envoy = processes.start_envoy(envoy_config, envoy_log)
            try:
                processes.wait_until(lambda: processes.envoy_ready(admin_port), "", envoy)
            except (RuntimeError, TimeoutError) as e:
                reason = "exited" if envoy.poll() is not None else "did not start"
                raise _ProcessFailed("envoy", envoy_log_path, reason) from e
            result = send_requests(envoy_port, requests, concurrency)
            time.sleep(0.5)  # Envoy flushes its access logs every 0.2 s
            stats = processes.envoy_stats(admin_port, "http.ingress_http.ext_proc.")
            stats.update(processes.envoy_stats(admin_port, "access_logs.grpc_access_log."))
        finally:
            if envoy is not None:
                processes.stop(envoy)
            server_status = processes.stop(server)
        if server_status != 0:
            raise _ProcessFailed(
                "the audit server",
                server_log_path,
                f"exited with status {server_status}",
                wal_dir / DEMO_LOG_ID,
            )
    return _Traffic(result, app.total, stats)


def _print_counts(
    traffic: _Traffic,
    requests: int,
    elapsed: float,
    mode: str,
    demo_report: LogReport | None,
    this_run: RunEntries,
) -> None:
    result, stats = traffic.result, traffic.stats
    ok_responses = sum(n for s, n in result.statuses.items() if 200 <= s < 300)
    print()
    print(
        f"requests sent        {requests} ({ok_responses} 2xx, "
        f"{sum(result.statuses.values()) - ok_responses} other, {result.errors} errors)"
        f" in {elapsed:.1f}s"
    )
    print(f"reached the app      {traffic.reached_app}")
    if demo_report is not None:
        latest = demo_report.latest
        print(f"entries in the log   {demo_report.entries} (every demo run with this store)")
        print(f"  from this run      {_describe_run(mode, this_run.kinds)}")
        print(
            f"checkpoints          {demo_report.checkpoints}, latest tree size "
            f"{latest.size if latest else 0}"
        )
    for reporter, count in sorted(this_run.reporters.items()):
        print(f"reporter             {reporter} ({count} entries; Envoy over the Unix socket)")
    if mode == "enforce":
        started_streams = stats.get("http.ingress_http.ext_proc.streams_started", 0)
        failed_streams = stats.get("http.ingress_http.ext_proc.streams_failed", 0)
        print(f"envoy ext_proc       streams started {started_streams}, failed {failed_streams}")
    written = stats.get("access_logs.grpc_access_log.logs_written", 0)
    dropped = stats.get("access_logs.grpc_access_log.logs_dropped", 0)
    print(f"envoy access logs    written {written}, dropped {dropped}")


def _print_how_to_verify(
    url: str, vkey: str, this_run: RunEntries, mode: str, workdir: Path, cwd: Path
) -> None:
    cli = command_name(cwd)
    url, quoted_vkey = shlex.quote(url), shlex.quote(vkey)
    print("verify it yourself:")
    print(f"  {cli} verify {url} --vkey {quoted_vkey}")
    sample = this_run.sample
    if sample is not None:
        proof = shlex.quote(_shown_path(workdir / f"entry-{sample['seq']}.tlog-proof", cwd))
        # prove --request-id finds request entries; an access entry is named by its seq.
        which = f"--request-id {sample['rid']}" if mode == "enforce" else f"--seq {sample['seq']}"
        print("prove that this entry is in the log, then check the proof offline:")
        print(f"  {cli} prove {url} --log {DEMO_LOG_ID} {which} --out {proof}")
        print(f"  {cli} check-proof {proof} --vkey {quoted_vkey}")
        print("\nthat entry (secrets redacted before anything was written):")
        print(json.dumps(sample, indent=2, sort_keys=True)[:2500])
