"""The demo app behind Envoy in docker-compose.yml (standard library only).

Two kinds of routes, as a real service has:

- normal routes (`/api/...`, `/healthz`, anything else): answered with a small
  JSON body; Envoy access-logs them to the audit server (ALS) after the fact;
- sensitive routes under `/admin` (`GET /admin/accounts`,
  `GET|DELETE /admin/accounts/<id>`): Envoy holds each request with the
  blocking ext_proc filter until the audit server has its entry durable, then
  forwards it here; the outcome follows by ALS (envoy/envoy-compose.yaml).

Every answer sets a session cookie, so the log shows response-header
redaction. Listens on 0.0.0.0:$APP_PORT (8080).
"""

from __future__ import annotations

import http.server
import json
import os
import re
from typing import Any

PORT = int(os.environ.get("APP_PORT", "8080"))
ACCOUNTS = ("/admin/accounts", "/admin/accounts/")
ACCOUNT = re.compile(r"/admin/accounts/([A-Za-z0-9_-]{1,64})")


def answer(method: str, path: str) -> tuple[int, dict[str, Any]]:
    """Status and JSON body for a request (path without the query)."""
    if path.startswith("/admin"):
        if path in ACCOUNTS and method == "GET":
            return 200, {"accounts": ["7", "42"]}
        if match := ACCOUNT.fullmatch(path):
            if method == "GET":
                return 200, {"account": match[1]}
            if method == "DELETE":
                return 200, {"deleted": match[1]}
            return 405, {"error": "method not allowed"}
        return 404, {"error": "no such admin route"}
    return (201 if method == "POST" else 200), {"ok": True}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        status, payload = answer(self.command, self.path.partition("?")[0])
        body = json.dumps(payload).encode() + b"\n"
        self.send_response(status)
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
