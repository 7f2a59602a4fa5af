"""One-shot traffic generator for docker-compose.yml (standard library only).

Sends $REQUESTS requests through Envoy ($TARGET_URL), some with credentials
the server must redact, then waits until the audit server has published a
signed checkpoint covering every logged entry ($METRICS_URL), so the verify
job that runs next sees the whole log. Exit 0 only if every request got a 2xx.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable

TARGET = os.environ.get("TARGET_URL", "http://envoy:10000")
METRICS = os.environ.get("METRICS_URL", "http://audit:9464/metrics")
REQUESTS = int(os.environ.get("REQUESTS", "200"))
WAIT = float(os.environ.get("WAIT_SECONDS", "60"))

WORKLOAD = [
    ("GET", "/api/orders?page=2&token=tok-SECRET-1", {"authorization": "Bearer eyJ.SECRET.sig"}),
    ("POST", "/api/orders", {"cookie": "session=SECRET-cookie; theme=dark"}),
    ("GET", "/healthz", {}),
    ("PUT", "/api/users/42", {"x-api-key": "key-SECRET-42"}),
    ("DELETE", "/api/users/42?reason=gdpr", {"authorization": "Basic dXNlcjpwYXNz"}),
]


def request(method: str, path: str, headers: dict[str, str]) -> int:
    body = b'{"item":"book"}' if method in ("POST", "PUT") else None
    url = TARGET + path
    req = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as response:  # noqa: S310 - our URL
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return -1.0


def wait_until(what: str, ready: Callable[[], bool], deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            if ready():
                return True
        except OSError:
            pass  # not up yet: Envoy or the server is still starting
        time.sleep(0.5)
    print(f"traffic: gave up waiting for {what}", file=sys.stderr)
    return False


def published() -> bool:
    with urllib.request.urlopen(METRICS, timeout=5) as r:  # noqa: S310 - our URL
        text = r.read().decode()
    # Every answered request's entries were durable before Envoy answered, so
    # the log size is final by now (at least one entry per request).
    size = metric(text, "extproc_audit_log_size")
    return size >= REQUESTS and metric(text, "extproc_audit_published_size") >= size


def main() -> int:
    deadline = time.monotonic() + WAIT
    if not wait_until("envoy", lambda: request("GET", "/healthz", {}) == 200, deadline):
        return 1
    statuses: Counter[int] = Counter()
    for i in range(REQUESTS - 1):  # the readiness probe above was request number one
        method, path, headers = WORKLOAD[i % len(WORKLOAD)]
        statuses[request(method, path, headers)] += 1
    statuses[200] += 1
    print(f"traffic: {REQUESTS} requests through {TARGET}: {dict(sorted(statuses.items()))}")
    if not wait_until("a checkpoint covering every entry", published, time.monotonic() + WAIT):
        return 1
    print("traffic: the audit server published a signed checkpoint covering every entry")
    return 0 if set(statuses) <= set(range(200, 300)) else 1


if __name__ == "__main__":
    sys.exit(main())
