"""What the auditor's commands show: `verify`'s report (the text lines of each
log, the `--format json` document) and `search --format table`, and the
times they take and show.

Everything printed here may quote bucket content (object keys, signed notes,
entry values chosen by HTTP clients), so each line goes through
extproc.core.display.escape before it reaches a terminal; `--format json` and
`search --format jsonl` are evidence and stay as read.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from extproc.core import entry
from extproc.core.display import escape
from extproc.core.fields import (
    AUTH,
    EVENT,
    ID,
    KIND,
    KIND_WRITER,
    METHOD,
    PATH,
    PRINCIPAL,
    REPORTER,
    REQ,
    RESP,
    RID,
    SEQ,
    SRC,
    STATUS,
    TS,
    nested,
)
from extproc.core.findings import Finding, LogReport

if TYPE_CHECKING:  # types only: `search` need not load verify, nor `verify` search
    from extproc.audit.search import Match
    from extproc.audit.verify import AuditResult


def parse_time_ms(text: str) -> int:
    """--since/--until: RFC 3339 (`2026-11-26T16:00:00Z`) or a date (UTC midnight)."""
    return int(entry.parse_time(text).timestamp() * 1000)


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _finding_json(f: Finding) -> dict[str, object]:
    doc: dict[str, object] = {"severity": f.severity, "key": f.key, "message": f.message}
    if f.evidence:
        doc["evidence"] = list(f.evidence)
    return doc


def _rule_json(mode: str, days: int, recorded_at: str | None = None) -> dict[str, object]:
    doc: dict[str, object] = {"mode": mode, "days": days}
    if recorded_at is not None:
        doc["recorded_at"] = recorded_at
    return doc


def result_to_json(result: AuditResult, store_url: str) -> dict[str, object]:
    """The `verify --format json` document (schema in docs/AUDITING.md)."""
    logs = []
    for r in result.reports:
        status = r.status
        latest = r.latest
        logs.append(
            {
                "log_id": r.log_id,
                "ok": r.ok,
                "entries": r.entries,
                "unauthenticated": r.unauthenticated,
                "rehashed": r.rehashed,
                "resumed_from": r.resumed_from,
                "consistency_proof": None
                if r.consistency_proof is None
                else [base64.b64encode(h).decode() for h in r.consistency_proof],
                "bundles": r.bundles,
                "checkpoints": r.checkpoints,
                "keys": r.keys,
                "epoch": r.epoch,
                "records": r.records,
                "latest": None
                if latest is None
                else {
                    "origin": latest.origin,
                    "size": latest.size,
                    "root": base64.b64encode(latest.root_hash).decode(),
                    "time": _iso(latest.timestamp_ms),
                    "writer": latest.writer,
                    "final": latest.final,
                    "note": r.latest_note,
                },
                "status": None
                if status is None
                else {
                    "state": status.state,
                    "newest": _iso(status.newest_ms),
                    "age_seconds": status.age_s,
                    "writers": status.writers,
                    "gaps": [
                        {
                            "kind": g.kind,
                            "start": _iso(g.start_ms),
                            "end": _iso(g.end_ms),
                            "seconds": g.seconds,
                            "writer": g.writer,
                        }
                        for g in status.gaps
                    ],
                },
                "findings": [_finding_json(f) for f in r.findings],
            }
        )
    return {
        "version": 1,
        "store": store_url,
        "valid": result.ok,
        "logs_verified": result.logs,
        "entries": sum(r.entries for r in result.reports),
        "unauthenticated": sum(r.unauthenticated for r in result.reports),
        "retention_checked": result.retention.checked,
        "retention": {
            "rule": None
            if result.retention.current is None
            else _rule_json(result.retention.current.mode, result.retention.current.days),
            "rule_readable": result.retention.readable,
            "recorded": None
            if result.retention.recorded is None
            else _rule_json(
                result.retention.recorded.mode,
                result.retention.recorded.days,
                result.retention.recorded.recorded_at,
            ),
            "min_days": result.retention.min_days,
        },
        "findings": [{"log_id": f.log_id, **_finding_json(f)} for f in result.general],
        "logs": logs,
    }


def print_log(report: LogReport, *, quiet: bool) -> None:
    """Human lines for one log's LogReport (kept stable: tests and scripts grep them)."""
    latest = report.latest
    signed = f"signed size {latest.size}" if latest else "no valid checkpoint"
    status = "OK" if report.ok else "INVALID"
    if not quiet or not report.ok:
        resumed = (
            f" ({report.rehashed} new since the verified size {report.resumed_from}"
            + (", consistency proof checked" if report.consistency_proof is not None else "")
            + ")"
            if report.resumed_from
            else ""
        )
        print(
            f"log {report.log_id}: {status}: {report.entries} entries in "
            f"{report.bundles} bundles, {report.checkpoints} checkpoints, {signed}{resumed}"
        )
        st = report.status
        if st is not None and st.state != "empty":
            newest = (
                datetime.fromtimestamp(st.newest_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                if st.newest_ms is not None
                else "?"
            )
            age = f", age {duration_text(st.age_s)}" if st.age_s is not None else ""
            print(f"  status: {st.state}, newest checkpoint {newest}{age}, "
                  f"{len(st.writers)} writer runs")  # fmt: skip
            for gap in st.gaps:
                print(f"  gap: {gap.kind} for {duration_text(gap.seconds)} after writer "
                      f"{gap.writer or '?'}")  # fmt: skip
        if len(report.keys) > 1 or report.epoch > 1:
            print(f"  signed by {escape(', '.join(report.keys))}; epoch {report.epoch}")
        if report.unauthenticated:
            print(f"  {report.unauthenticated} entries from unauthenticated reporters "
                  "(reporter.auth; verify --require-authenticated refuses them)")  # fmt: skip
    # Findings quote object keys and signed notes: bucket content, so escaped
    # before it reaches a terminal (core/display.py).
    for finding in report.findings:
        print(f"  {escape(str(finding))}")
        for note in finding.evidence:
            print("    evidence:")
            for line in note.rstrip("\n").split("\n"):
                print(f"      {escape(line)}")


def duration_text(seconds: float) -> str:
    """A duration as a person reads it: 90s, 15m, 3.5h, 2.0d."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def table_header(log_width: int) -> str:
    """The column names of `search --format table`, aligned as table_row."""
    return _row(
        "TS", "LOG", "SEQ", "KIND", "METHOD", "PATH", "STATUS", "PRINCIPAL", "REPORTER", "RID",
        log_width,
    )  # fmt: skip


def reporter_text(fields: dict[str, Any]) -> str:
    """Who reported an entry, as `auth:id` (`xfcc:spiffe://...`, `unix:/run/a.sock`),
    or the bare `auth` when it has no id (`unauthenticated`)."""
    reporter = fields.get(REPORTER)
    if not isinstance(reporter, dict):
        return ""
    auth, rid = str(reporter.get(AUTH, "")), reporter.get(ID)
    if not isinstance(rid, str) or not rid:
        return auth
    return rid if rid.startswith(f"{auth}:") else f"{auth}:{rid}"


def table_row(match: Match, log_width: int) -> str:
    """One aligned line; for a response, method, path and principal come from
    its request entry when it was read. Long values are cut (the table is for
    reading; --format jsonl prints the evidence).

    Every column is escaped (extproc.core.display.escape): entries hold text
    chosen by HTTP clients, and no control, format or line-breaking character
    of theirs reaches the terminal, so one entry is always one visible line."""
    f = match.fields
    src = match.request if match.request is not None else f
    status = nested(f, RESP, STATUS)
    kind = str(f.get(KIND, ""))
    path = str(nested(src, REQ, PATH) or "")
    if kind == KIND_WRITER:
        path = f"[{f.get(EVENT, '')}]"
    return _row(
        str(f.get(TS, "")),
        match.log_id,
        str(f.get(SEQ, "")),
        kind,
        str(nested(src, REQ, METHOD) or ""),
        path,
        "" if status is None else str(status),
        str(nested(src, SRC, PRINCIPAL) or ""),
        reporter_text(f),
        str(f.get(RID, "")),
        log_width,
    )


def _cut(value: str, width: int) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def _row(
    ts: str,
    log_id: str,
    seq: str,
    kind: str,
    method: str,
    path: str,
    status: str,
    principal: str,
    reporter: str,
    rid: str,
    log_width: int,
) -> str:
    ts, log_id, seq, kind = escape(ts), escape(log_id), escape(seq), escape(kind)
    method, path, status = escape(method), escape(path), escape(status)
    principal, reporter, rid = escape(principal), escape(reporter), escape(rid)
    return (
        f"{ts:<27} {_cut(log_id, log_width):<{log_width}} {seq:>10} {kind:<8} "
        f"{_cut(method, 7):<7} {_cut(path, 40):<40} {status:>6} {_cut(principal, 40):<40} "
        f"{_cut(reporter, 40):<40} {rid}"
    ).rstrip()
