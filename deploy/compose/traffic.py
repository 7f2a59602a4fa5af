"""One-shot traffic generator for docker-compose.yml (standard library only).

Sends $REQUESTS requests through Envoy ($TARGET_URL): normal routes, which
Envoy access-logs to the audit server after the fact (ALS), and sensitive
routes under $ENFORCED_PREFIXES (/admin), which Envoy holds with the blocking
ext_proc filter until their entry is durable. Some carry credentials the
server must redact. Counts what it sent per route, prints a summary and
writes it to $SUMMARY_FILE (the verify job checks the log against it), then
waits until the audit server has logged an access entry for every request
and published a signed checkpoint covering the whole log ($METRICS_URL), so
the verify job that runs next sees all of it.

Every request of a run carries `user-agent: extproc-audit-demo-traffic/<run>`
(access entries keep the user agent), so the log's entries of this run can be
told from earlier runs and from your own requests. Readiness probes say
`.../probe` instead: they are logged too, but are not part of the run.

Exit 0 only if every request got a 2xx (the demo app answers these with 200
or 201) and everything was logged and published in time.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGET = os.environ.get("TARGET_URL", "http://envoy:10000")
METRICS = os.environ.get("METRICS_URL", "http://audit:9464/metrics")
REQUESTS = int(os.environ.get("REQUESTS", "200"))
WAIT = float(os.environ.get("WAIT_SECONDS", "60"))
SUMMARY_FILE = os.environ.get("SUMMARY_FILE", "")
ENFORCED = tuple(p for p in os.environ.get("ENFORCED_PREFIXES", "/admin").split(",") if p)
AGENT = "extproc-audit-demo-traffic"
ACCESS_ENTRIES = "extproc_audit_access_entries_total"

# (method, path with query, headers): 5 normal routes, 2 sensitive ones.
WORKLOAD = [
    ("GET", "/api/orders?page=2&token=tok-SECRET-1", {"authorization": "Bearer eyJ.SECRET.sig"}),
    ("POST", "/api/orders", {"cookie": "session=SECRET-cookie; theme=dark"}),
    ("GET", "/admin/accounts", {"authorization": "Bearer admin-SECRET-token"}),
    ("GET", "/healthz", {}),
    ("PUT", "/api/users/42", {"x-api-key": "key-SECRET-42"}),
    (
        "DELETE",
        "/admin/accounts/42?reason=offboarding",
        {"authorization": "Bearer admin-SECRET-token"},
    ),
    ("DELETE", "/api/users/42?reason=gdpr", {"authorization": "Basic dXNlcjpwYXNz"}),
]


def route(method: str, path: str) -> str:
    """What the summary counts by: the method and the path without its query."""
    return f"{method} {path.partition('?')[0]}"


def enforced(path: str) -> bool:
    return any(path.startswith(p) for p in ENFORCED)


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


def scrape() -> str:
    with urllib.request.urlopen(METRICS, timeout=5) as r:  # noqa: S310 - our URL
        return str(r.read().decode())


def metric(text: str, name: str) -> float:
    """A metric's value, summed over its labels; -1 if absent."""
    values = [
        float(line.rsplit(None, 1)[1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    ]
    return sum(values) if values else -1.0


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


def summary_text(summary: dict[str, Any]) -> str:
    lines = [
        f"traffic: run {summary['run']}: {summary['requests']} requests through "
        f"{summary['target']} (user-agent {summary['user_agent']})",
        f"  {'route':<32} {'sent':>5}  {'statuses':<14} audit path",
    ]
    for name, r in summary["routes"].items():
        statuses = ", ".join(f"{s}: {n}" for s, n in r["statuses"].items())
        how = "held by ext_proc until logged, outcome by ALS" if r["enforced"] else "ALS"
        lines.append(f"  {name:<32} {r['sent']:>5}  {statuses:<14} {how}")
    held = sum(r["sent"] for r in summary["routes"].values() if r["enforced"])
    lines.append(
        f"  expected in the log: {summary['requests']} access entries, "
        f"{held} request entries (the {'/'.join(ENFORCED)} ones)"
    )
    return "\n".join(lines)


def main() -> int:
    run = os.environ.get("RUN_ID") or uuid.uuid4().hex[:12]
    agent = f"{AGENT}/{run}"
    deadline = time.monotonic() + WAIT
    # Access entries logged so far, so this run waits for its own (the server
    # may have logged earlier runs and your own requests).
    before: list[float] = []

    def baseline() -> bool:
        before.append(max(0.0, metric(scrape(), ACCESS_ENTRIES)))
        return True

    if not wait_until("the audit server's metrics", baseline, deadline):
        return 1
    probes = 0

    def probe() -> bool:
        nonlocal probes
        status = request("GET", "/healthz", {"user-agent": f"{AGENT}/probe"})
        probes += 1  # answered by Envoy, so access-logged whatever the status
        return status == 200

    if not wait_until("envoy", probe, deadline):
        return 1

    sent: Counter[str] = Counter()
    statuses: dict[str, Counter[int]] = {}
    for i in range(REQUESTS):
        method, path, headers = WORKLOAD[i % len(WORKLOAD)]
        try:
            status = request(method, path, {**headers, "user-agent": agent})
        except OSError as e:
            print(f"traffic: {method} {path}: {e}", file=sys.stderr)
            status = 0  # no answer: counted, and the run fails
        name = route(method, path)
        sent[name] += 1
        statuses.setdefault(name, Counter())[status] += 1
    summary: dict[str, Any] = {
        "run": run,
        "user_agent": agent,
        "target": TARGET,
        "requests": sum(sent.values()),
        "enforced_prefixes": list(ENFORCED),
        "routes": {
            name: {
                "sent": sent[name],
                "statuses": {str(s): n for s, n in sorted(statuses[name].items())},
                "enforced": enforced(name.split(" ", 1)[1]),
            }
            for name in sorted(sent)
        },
    }
    print(summary_text(summary), flush=True)
    if SUMMARY_FILE:
        out = Path(SUMMARY_FILE)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(out)
    ok = all(200 <= s < 300 for c in statuses.values() for s in c)
    if not ok:
        print("traffic: some requests did not get a 2xx (above)", file=sys.stderr)

    target = before[-1] + probes + summary["requests"]
    if not wait_until(
        f"{target:.0f} access entries",
        lambda: metric(scrape(), ACCESS_ENTRIES) >= target,
        time.monotonic() + WAIT,
    ):
        return 1
    time.sleep(0.5)  # the last access entries reach the WAL with the next group commit

    def published() -> bool:
        text = scrape()
        size = metric(text, "extproc_audit_log_entries")
        return size > 0 and metric(text, "extproc_audit_published_entries") >= size

    if not wait_until("a checkpoint covering every entry", published, time.monotonic() + WAIT):
        return 1
    print("traffic: the audit server logged every request and published a signed checkpoint")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
