"""The demo app behind Envoy in docker-compose.yml (standard library only).

Answers every request with a small JSON body and a session cookie (so the log
shows response-header redaction). Listens on 0.0.0.0:$APP_PORT (8080).
"""

from __future__ import annotations

import http.server
import os
from typing import Any

PORT = int(os.environ.get("APP_PORT", "8080"))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = b'{"ok":true}\n'
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("content-type", "application/json")
        self.send_header("set-cookie", "session=demo-session-secret; Path=/; HttpOnly")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown the compose output


if __name__ == "__main__":
    server = http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler)  # noqa: S104
    print(f"demo app listening on :{PORT}", flush=True)
    server.serve_forever()
