"""The verify job of docker-compose.yml: the auditor's view, with only the public key.

    python verify.py verify URL --vkey @FILE [--origin-prefix P]

The arguments are an `extproc-audit verify` command line (the compose
service's `command`). This runs it and requires VALID, then reads every entry
back with `extproc-audit search` (which verifies what it reads again) and
checks the log against what the traffic job says it sent ($SUMMARY_FILE):

- every request of the run has exactly one `access` entry (the access-log
  service, ALS), with the status the client got, per route;
- exactly the requests under $ENFORCED_PREFIXES (/admin) also have a `request`
  entry, the one ext_proc held the request for: written before the access
  entry, while the request was in flight (its `ts` within the access entry's
  start and duration), and linked by `ref` (its `seq`) and `rid` from the
  access entry;
- in the whole log (earlier runs, your own requests): no `request` entry
  outside the enforced prefixes, and every `ref` names a `request` entry of the
  same request id, once.

Also prints how the reporters were authenticated (`reporter.auth`): in the
demo, `unauthenticated` (docs/DEPLOYMENT.md). Exit 0 only if all of it holds.
Standard library only, plus the `extproc-audit` package of the image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

SUMMARY_FILE = os.environ.get("SUMMARY_FILE", "")
ENFORCED = tuple(p for p in os.environ.get("ENFORCED_PREFIXES", "/admin").split(",") if p)
CLI = [sys.executable, "-m", "extproc"]  # the image's venv Python runs extproc-audit
# search takes these options of the verify command line (the trusted keys, the origin)
SHARED_OPTIONS = ("--vkey", "--keyring", "--origin-prefix")
# start_ms is truncated to the millisecond, the duration to the microsecond
SLACK = timedelta(milliseconds=1)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600, check=False)


def search_args(verify: list[str]) -> list[str]:
    """`extproc-audit search` for the logs and keys of a `verify` command line."""
    args = ["search", verify[1], "--format", "jsonl"]
    for i, word in enumerate(verify):
        if word in SHARED_OPTIONS and i + 1 < len(verify):
            args += [word, verify[i + 1]]
    return args


def enforced(path: str) -> bool:
    return any(path.startswith(p) for p in ENFORCED)


def route(e: dict[str, Any]) -> str:
    req = e.get("req") or {}
    return f"{req.get('method', '')} {req.get('path', '')}"


def agent(e: dict[str, Any]) -> str:
    value = ((e.get("req") or {}).get("headers") or {}).get("user-agent", "")
    return value if isinstance(value, str) else ""


def ts(e: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(e["ts"]).replace("Z", "+00:00"))


def held_in_flight(request: dict[str, Any], access: dict[str, Any]) -> bool:
    """The request entry was sequenced after the request started and before its
    response ended (Envoy's start time and duration, in the access entry)."""
    timing = access.get("timing") or {}
    if "start_ms" not in timing or "duration_us" not in timing:
        return False
    start = datetime.fromtimestamp(timing["start_ms"] / 1000, tz=ts(request).tzinfo)
    end = start + timedelta(microseconds=timing["duration_us"])
    return start - SLACK <= ts(request) <= end + SLACK


def check_log(entries: list[dict[str, Any]]) -> list[str]:
    """Rules that hold for every entry of the log, whoever sent the request."""
    problems = []
    requests = {e["seq"]: e for e in entries if e.get("kind") == "request"}
    for e in requests.values():
        if not enforced((e.get("req") or {}).get("path", "")):
            problems.append(f"request entry {e['seq']} ({route(e)}) outside {ENFORCED}")
    refs: Counter[int] = Counter()
    for e in entries:
        if e.get("kind") != "access" or "ref" not in e:
            continue
        target = requests.get(e["ref"])
        refs[e["ref"]] += 1
        if target is None:
            problems.append(f"access entry {e['seq']}: ref {e['ref']} is not a request entry")
        elif target["rid"] != e["rid"] or route(target) != route(e) or target["seq"] >= e["seq"]:
            problems.append(f"access entry {e['seq']}: ref {e['ref']} is another request")
    for seq, n in refs.items():
        if n > 1:
            problems.append(f"request entry {seq} is the ref of {n} access entries")
    return problems


def check_run(entries: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    """The traffic job's run: what it sent is exactly what the log holds."""
    problems = []
    ours = [e for e in entries if agent(e) == summary["user_agent"]]
    requests = {e["seq"]: e for e in ours if e.get("kind") == "request"}
    access = [e for e in ours if e.get("kind") == "access"]
    by_route: dict[str, Counter[str]] = {}
    for e in access:
        status = str((e.get("resp") or {}).get("status"))
        by_route.setdefault(route(e), Counter())[status] += 1
    held = Counter(route(e) for e in requests.values())
    linked: set[int] = set()
    for e in access:
        if not enforced((e.get("req") or {}).get("path", "")):
            if "ref" in e:
                problems.append(f"access entry {e['seq']} ({route(e)}): a ref, yet not enforced")
            continue
        request = requests.get(e.get("ref", -1))
        if request is None:
            problems.append(f"access entry {e['seq']} ({route(e)}): no ref to its request entry")
            continue
        linked.add(request["seq"])
        if not held_in_flight(request, e):
            problems.append(
                f"request entry {request['seq']} ({route(e)}) at {request['ts']} is not within "
                f"its request's lifetime (access entry {e['seq']}: {e.get('timing')})"
            )
    for seq in sorted(set(requests) - linked):
        problems.append(f"request entry {seq} ({route(requests[seq])}): no access entry")
    for name in sorted(set(summary["routes"]) | set(by_route) | set(held)):
        expected = summary["routes"].get(name, {"sent": 0, "statuses": {}})
        logged = by_route.get(name, Counter())
        if dict(logged) != expected["statuses"]:
            problems.append(
                f"{name}: sent {expected['sent']} {expected['statuses']}, "
                f"access entries {sum(logged.values())} {dict(logged)}"
            )
        want_held = expected["sent"] if enforced(name.split(" ", 1)[1]) else 0
        if held[name] != want_held:
            problems.append(f"{name}: {held[name]} request entries, expected {want_held}")
    return problems


def report(entries: list[dict[str, Any]], summary: dict[str, Any] | None) -> None:
    kinds = Counter(str(e.get("kind")) for e in entries)
    auth = Counter(str((e.get("reporter") or {}).get("auth")) for e in entries if "reporter" in e)
    print(f"verify: {len(entries)} entries: {dict(sorted(kinds.items()))}")
    print(f"verify: reporters: {dict(auth)}", end="")
    if set(auth) == {"unauthenticated"}:
        print(" (the demo listens without mTLS: anyone on the compose network could write)")
    else:
        print()
    if summary is None:
        return
    print(f"verify: traffic run {summary['run']} ({summary['user_agent']}):")
    ours = [e for e in entries if agent(e) == summary["user_agent"]]
    access = Counter(route(e) for e in ours if e.get("kind") == "access")
    held = Counter(route(e) for e in ours if e.get("kind") == "request")
    linked = Counter(route(e) for e in ours if e.get("kind") == "access" and "ref" in e)
    for name, r in summary["routes"].items():
        print(
            f"  {name:<32} sent {r['sent']:>4}  access {access[name]:>4}  "
            f"request (held) {held[name]:>4}  linked by ref {linked[name]:>4}"
        )


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "verify":
        print("usage: verify.py verify URL --vkey KEY [...]", file=sys.stderr)
        return 2
    result = cli(*argv)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    valid = any(line.startswith("VALID") for line in result.stdout.splitlines())
    if result.returncode != 0 or not valid:
        print("verify: the log does not verify (above)", file=sys.stderr)
        return 1
    found = cli(*search_args(argv))
    if found.returncode != 0:
        sys.stderr.write(found.stderr)
        print("verify: reading the entries back failed (above)", file=sys.stderr)
        return 1
    entries = [json.loads(line) for line in found.stdout.splitlines() if line.strip()]
    summary = None
    if SUMMARY_FILE and Path(SUMMARY_FILE).is_file():
        summary = json.loads(Path(SUMMARY_FILE).read_text())
    report(entries, summary)
    problems = check_log(entries)
    if summary is None:
        print(f"verify: no traffic summary at {SUMMARY_FILE!r}: checked the log-wide rules only")
    else:
        problems += check_run(entries, summary)
    for problem in problems:
        print(f"verify: PROBLEM: {problem}", file=sys.stderr)
    if problems:
        return 1
    held = "/".join(ENFORCED)
    print(
        f"verify: OK: VALID, every request has its access entry, exactly the {held} ones "
        "a request entry held before forwarding, linked by ref"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
