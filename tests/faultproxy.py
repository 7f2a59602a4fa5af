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
"""

from __future__ import annotations

import http.client
import http.server
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

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
