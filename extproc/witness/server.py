"""`extproc-audit witness`: a C2SP tlog-witness over HTTP (c2sp.org/tlog-witness).

One endpoint, `POST <prefix>/add-checkpoint`; the decision is
core/witness.py's, made and persisted under one lock, so two requests for a
log never both pass the old-size check (the spec's rollback race). Every
request has budgets before work: the body's declared length (Content-Length
required, at most core.witness.MAX_BODY_BYTES; no chunked bodies), a socket
timeout for each read, and a bound on connections served at once (past it a
connection is closed unanswered). It binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from extproc.core.cosignature import Cosigner
from extproc.core.display import escape
from extproc.core.witness import (
    MAX_BODY_BYTES,
    MAX_CONNECTIONS,
    OK,
    TEXT_CONTENT_TYPE,
    Answer,
    WitnessedLogs,
    add_checkpoint,
)
from extproc.errors import ConfigError, StorageError
from extproc.witness.state import WitnessState

log = logging.getLogger("extproc.witness")

ENDPOINT = "/add-checkpoint"  # c2sp.org/tlog-witness, under the submission prefix
READ_TIMEOUT_S = 10.0


class Witness:
    """The witness's state, keys and lock: answers one request body at a time."""

    def __init__(
        self,
        logs: WitnessedLogs,
        cosigner: Cosigner,
        state: WitnessState,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.logs = logs
        self.cosigner = cosigner
        self.state = state
        self._clock = clock
        self._lock = threading.Lock()

    def answer(self, body: bytes) -> Answer:
        with self._lock:
            try:
                answer = add_checkpoint(
                    body, self.logs, self.state.get, self.cosigner, int(self._clock())
                )
                if answer.status == OK and answer.latest is not None:
                    self.state.put(answer.origin, answer.latest)
            except StorageError as e:  # a record unreadable or not written: nothing cosigned
                log.error("not cosigned: %s", e)  # noqa: TRY400 (one line, no traceback)
                return Answer(503, "witness cannot read or persist its state\n")
        if answer.status == OK:
            size = answer.latest.size if answer.latest else 0
            log.info("cosigned %s at tree size %d", escape(answer.origin), size)
        else:
            # A refusal of a log's signed checkpoint can be evidence of a fork: kept.
            log.warning(
                "refused (%d) %s: %s",
                answer.status,
                escape(answer.origin) or "-",
                escape(answer.body.strip()[:300]),
            )
        return answer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the spec recommends
    server: WitnessHTTPServer
    timeout = READ_TIMEOUT_S  # each read of the socket (slow clients)

    def _send(self, status: int, body: str, content_type: str = TEXT_CONTENT_TYPE) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, status: HTTPStatus, why: str) -> None:
        self.close_connection = True  # the rest of the stream cannot be trusted
        self._send(status, why + "\n")

    def do_POST(self) -> None:
        if self.path != self.server.prefix + ENDPOINT:
            self._refuse(HTTPStatus.NOT_FOUND, "no such endpoint")
            return
        if self.headers.get("Transfer-Encoding") is not None:
            self._refuse(
                HTTPStatus.BAD_REQUEST, "chunked bodies are not taken: send Content-Length"
            )
            return
        declared = self.headers.get("Content-Length", "")
        if not declared.isdigit() or len(declared) > 12:
            self._refuse(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
            return
        if int(declared) > MAX_BODY_BYTES:
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
            return
        try:
            body = self.rfile.read(int(declared))
        except OSError:  # a timeout: nothing was decided
            self.close_connection = True
            return
        if len(body) != int(declared):
            self.close_connection = True
            return
        answer = self.server.witness.answer(body)
        self._send(answer.status, answer.body, answer.content_type)

    def _not_allowed(self) -> None:
        self._refuse(HTTPStatus.METHOD_NOT_ALLOWED, "only POST add-checkpoint")

    do_GET = do_PUT = do_DELETE = do_HEAD = do_PATCH = _not_allowed

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)


class WitnessHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` at once."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        witness: Witness,
        *,
        prefix: str = "",
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.witness = witness
        self.prefix = prefix.rstrip("/")
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("connection from %s closed: %s connections open", client_address[0], "all")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def url(self) -> str:
        host, port = self.server_address[0], self.server_address[1]
        text = host.decode() if isinstance(host, bytes) else host
        return f"http://{text}:{port}{self.prefix}"


def bind(
    host: str,
    port: int,
    witness: Witness,
    *,
    prefix: str = "",
    max_connections: int = MAX_CONNECTIONS,
) -> WitnessHTTPServer:
    """The server, bound (port 0: any free port); serve_forever() runs it."""
    try:
        return WitnessHTTPServer(
            (host, port), witness, prefix=prefix, max_connections=max_connections
        )
    except OSError as e:
        raise ConfigError(f"witness cannot listen on {host}:{port}: {e.strerror}") from e
