"""`extproc-audit demo`: the whole pipeline on one machine, end to end.

Starts a small upstream app, the audit server, and a real Envoy in front of
the app with the ext_proc filter; sends real HTTP requests through Envoy;
stops the server with SIGTERM (final checkpoint); verifies the published log
and prints what happened.
"""

from __future__ import annotations

import http.client
import http.server
import json
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extproc import processes
from extproc.auditor import all_ok, verify_store
from extproc.core import layout
from extproc.core.note import Signer
from extproc.envoyconf import Endpoint, bootstrap, to_yaml
from extproc.errors import ConfigError
from extproc.keys import load_signer, write_signer
from extproc.log.publisher import bundle_lines
from extproc.store import open_store

DEMO_LOG_ID = "demo"
DEMO_REDIRECT = "https://client.example/cb?code=demo-oauth-code-S1#access_token=demo-token-S2"
DEMO_KEY_NAME = "extproc-audit-demo"


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

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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


def _sample_entry(store_url: str) -> dict[str, Any] | None:
    store = open_store(store_url)
    for obj in store.list(layout.log_prefix(store.prefix, DEMO_LOG_ID) + "entries/"):
        name = layout.parse_key(store.prefix, obj.key)
        if name and name.bundle:
            for line in bundle_lines(store.get(obj.key), compressed=name.bundle.gzip).splitlines():
                fields: dict[str, Any] = json.loads(line)
                if fields.get("kind") in ("request", "exchange") and fields["req"]["headers"].get(
                    "authorization"
                ):
                    return fields
    return None


def run_demo(
    *, requests: int, store_url: str | None, workdir: Path, mode: str, concurrency: int
) -> int:
    if requests < 1:
        raise ConfigError("--requests must be at least 1")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    signer = _ensure_key(workdir)
    vkey = signer.verifier().to_text()
    server_args: list[str] = []
    if store_url is None:
        store_url = str(workdir / "store")
    elif store_url.startswith("s3://"):
        from extproc.store.s3 import S3Store

        store = open_store(store_url)
        assert isinstance(store, S3Store)
        if not store.bucket_exists():
            store.create_locked_bucket("GOVERNANCE", 1)
            print(f"created bucket {store.bucket} with Object Lock (GOVERNANCE, 1 day)")
    grpc_port, metrics_port = processes.free_port(), processes.free_port()
    envoy_port, admin_port = processes.free_port(), processes.free_port()
    server_args += [
        "--store",
        store_url,
        "--key",
        str(workdir / "signing.key"),
        "--listen",
        f"127.0.0.1:{grpc_port}",
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--log-id",
        DEMO_LOG_ID,
        "--wal-dir",
        str(workdir / "wal"),
        "--mode",
        mode,
    ]
    path = "ext_proc + access-log stream" if mode == "enforce" else "access-log stream"
    print(f"demo: {requests} requests through Envoy -> audit server ({path}, {mode} mode)")
    started = time.monotonic()
    with (
        UpstreamApp() as app,
        (workdir / "server.log").open("wb") as server_log,
        (workdir / "envoy.log").open("wb") as envoy_log,
    ):
        config = bootstrap(
            listen=Endpoint("127.0.0.1", envoy_port),
            ext_proc=Endpoint("127.0.0.1", grpc_port),
            upstream=Endpoint("127.0.0.1", app.port),
            admin=Endpoint("127.0.0.1", admin_port),
            mode=mode,
        )
        envoy_config = workdir / "envoy.yaml"
        envoy_config.write_text(to_yaml(config))
        server = processes.start_server(server_args, server_log)
        envoy = None
        try:
            processes.wait_until(
                lambda: processes.grpc_serving(f"127.0.0.1:{grpc_port}"), "audit server", server
            )
            envoy = processes.start_envoy(envoy_config, envoy_log)
            processes.wait_until(lambda: processes.envoy_ready(admin_port), "envoy", envoy)
            result = send_requests(envoy_port, requests, concurrency)
            time.sleep(0.5)  # Envoy flushes its access logs every 0.2 s
            stats = processes.envoy_stats(admin_port, "http.ingress_http.ext_proc.")
            stats.update(processes.envoy_stats(admin_port, "access_logs.grpc_access_log."))
        finally:
            if envoy is not None:
                processes.stop(envoy)
            server_status = processes.stop(server)
    if server_status != 0:
        print(f"audit server exited with status {server_status}; see {workdir / 'server.log'}")
        return 2

    store = open_store(store_url)
    reports, general = verify_store(store, signer.verifier())
    ok = all_ok(reports, general)
    demo_report = next((r for r in reports if r.log_id == DEMO_LOG_ID), None)
    elapsed = time.monotonic() - started
    ok_responses = sum(n for s, n in result.statuses.items() if 200 <= s < 300)
    print()
    print(
        f"requests sent        {requests} ({ok_responses} 2xx, "
        f"{sum(result.statuses.values()) - ok_responses} other, {result.errors} errors)"
        f" in {elapsed:.1f}s"
    )
    print(f"reached the app      {app.total}")
    if demo_report is not None:
        latest = demo_report.latest
        per_request = (
            "a request entry, held until durable, and an access entry with its outcome"
            if mode == "enforce"
            else "an access entry"
        )
        print(
            f"entries in the log   {demo_report.entries} ({per_request} per request, plus "
            "the writer's start and stop entries, over all demo runs)"
        )
        print(
            f"checkpoints          {demo_report.checkpoints}, latest tree size "
            f"{latest.size if latest else 0}"
        )
    if mode == "enforce":
        started_streams = stats.get("http.ingress_http.ext_proc.streams_started", 0)
        failed_streams = stats.get("http.ingress_http.ext_proc.streams_failed", 0)
        print(f"envoy ext_proc       streams started {started_streams}, failed {failed_streams}")
    written = stats.get("access_logs.grpc_access_log.logs_written", 0)
    dropped = stats.get("access_logs.grpc_access_log.logs_dropped", 0)
    print(f"envoy access logs    written {written}, dropped {dropped}")
    for finding in general + [f for r in reports for f in r.findings]:
        print(f"  {finding}")
    print(f"verification         {'VALID' if ok else 'INVALID'}")
    print(f"log location         {store.url}")
    print(f"verifier key         {vkey}")
    print()
    print("verify it yourself:")
    print(f"  extproc-audit verify {store.url} --vkey '{vkey}'")
    sample = _sample_entry(store_url)
    if sample is not None:
        proof = workdir / f"entry-{sample['seq']}.tlog-proof"
        print("prove that this entry is in the log, then check the proof offline:")
        print(
            f"  extproc-audit prove {store.url} --log {DEMO_LOG_ID} "
            f"--request-id {sample['rid']} --out {proof}"  # or --seq, as a receipt names it
        )
        print(f"  extproc-audit check-proof {proof} --vkey '{vkey}'")
        print("\nthat entry (secrets redacted before anything was written):")
        print(json.dumps(sample, indent=2, sort_keys=True)[:2500])
    return 0 if ok else 1
