"""Rerun issue 12's fault table ("S3 is not trusted either") and print it.

Each row runs a real stack (Envoy in enforce mode, the audit server, an
upstream app) whose server reaches S3 only through tests/faultproxy.py's
FaultProxy, under steady load through Envoy; the fault stays on for
--seconds, then the store heals. The same scenario functions as
tests/integration/test_faults.py, measured instead of asserted.

    .venv/bin/python scripts/fault_table.py --seconds 8
    .venv/bin/python scripts/fault_table.py --rows blackhole,fulldisk --s3 localstack

S3 is LocalStack (the strict S3 lane: scripts/setup_localstack.sh) where it
starts, else moto. The full-disk row mounts a 3 MiB volume under the WAL and
needs root. A markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

# Runs as `python scripts/fault_table.py` from the checkout: the tests package
# (the harness) lives beside this folder.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest

from extproc import processes
from tests import conftest
from tests.faultscenarios import (
    FAULT_ROWS,
    DiskMeasured,
    Measured,
    VolumeUnavailable,
    run_fault,
    run_full_disk,
    run_kill9,
    run_sigterm,
)

# The rows, in its order: (row key, label, what was measured before the fixes).
ROWS = [
    ("slowdown", "503 SlowDown on 50% of PUTs",
     "0 lost, caught up 0.5 s after heal, VALID"),
    ("error", "500 on every PUT",
     "0 lost, retry waits grew to 15.5 s, caught up 8.1 s after heal, VALID"),
    ("delay", "2-5 s delay on every PUT", "0 lost, VALID"),
    ("reset", "connection closed mid-response, 30%", "0 lost, VALID"),
    ("blackhole", "200 returned, object never stored, 30% of PUTs",
     "objects missing; acknowledged requests absent from S3; the writer noticed nothing"),
    ("backlog", "backlog bound 200 KB + 500 outage",
     "503s during the outage, as designed, and 552 more after S3 healed"),
    ("sigterm", "SIGTERM during a 500 outage",
     "40.2 s to exit (2x --drain-timeout), exit 1, empty reason"),
    ("kill9", "kill -9 during the outage, restart after", "0 lost, VALID, `gap: crash for 21s`"),
    ("fulldisk", "WAL on a full disk (3 MiB volume, S3 cut, load through Envoy; then S3 restored)",
     "503s while full, server stays up; never recovered; one ERROR line per denied request"),
]  # fmt: skip
ROW_KEYS = [key for key, _, _ in ROWS]
DRAIN_TIMEOUT = 6.0


def _progress(message: str) -> None:
    print(f"[fault_table {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class _TempPaths:
    """What the `localstack` fixture needs of pytest's tmp_path_factory."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.base))


@contextmanager
def _s3_server(choice: str, base: Path) -> Iterator[conftest.S3Server]:
    """LocalStack (started as the test suite starts it) or moto, stopped on exit."""
    if choice in ("auto", "localstack"):
        # The fixture's own function: one way to start LocalStack, not a copy.
        start_localstack: Callable[..., Generator[conftest.S3Server, None, None]] = (
            conftest.localstack.__wrapped__  # type: ignore[attr-defined]
        )
        generator = start_localstack(_TempPaths(base))
        try:
            server = next(generator)
        except pytest.skip.Exception as e:
            if choice == "localstack":
                raise SystemExit(f"fault_table: LocalStack unavailable: {e}") from None
            _progress(f"LocalStack unavailable, using moto ({e})")
        else:
            _progress(f"S3: LocalStack at {server.endpoint}")
            try:
                yield server
            finally:
                generator.close()
            return
    port = processes.free_port()
    moto = conftest.start_moto(port)
    _progress(f"S3: moto at 127.0.0.1:{port}")
    try:
        yield conftest.MotoServer("moto", f"http://127.0.0.1:{port}", False, port, moto)
    finally:
        moto.stop()


def _run_row(
    key: str, s3: conftest.S3Server, base: Path, seconds: float, rate: float, volume: str
) -> Measured:
    with conftest.stack_factory(base) as make:
        if key in FAULT_ROWS:
            return run_fault(make, s3, FAULT_ROWS[key], seconds=seconds, rate=rate)
        if key == "sigterm":
            return run_sigterm(make, s3, seconds=seconds, drain_timeout=DRAIN_TIMEOUT, rate=rate)
        if key == "kill9":
            return run_kill9(make, s3, seconds=seconds, rate=rate)
        if key == "fulldisk":
            return run_full_disk(make, s3, kind=volume, base=base, rate=max(rate, 150.0))
    raise ValueError(key)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _cells(key: str, m: Measured) -> list[str]:
    """lost, catch-up, refusals after heal, verify, SIGTERM exit, notes."""
    lost = f"{len(m.lost)} of {m.acknowledged}"
    catch_up = "never" if m.catch_up is None else f"{m.catch_up:.1f} s"
    if key in ("sigterm", "kill9") and m.catch_up is not None:
        # Measured from the restarted server serving, after an access-log flush (0.6 s).
        catch_up = f"restart: published within {m.catch_up + 0.6:.1f} s of serving"
    refusals = str(m.refused_after_heal)
    if m.refused_after_heal:
        refusals += f" (last sent {m.last_refusal_after_heal:.1f} s after heal)"
    verdict = m.verify_verdict.split(":")[0] if m.verify_verdict else "?"
    verify = verdict + (f" ({'; '.join(m.gaps)})" if m.gaps else "")
    exit_cell = "-"
    answers = ", ".join(
        f"{'no answer' if status is None else status} x{count}"
        for status, count in sorted(m.statuses.items(), key=lambda item: item[0] or 0)
    )
    notes = [f"{m.sent} sent ({answers}), {m.acknowledged} acknowledged"]
    if m.envoy_ext_proc:
        notes.append(
            "envoy ext_proc " + ", ".join(f"{k} {v}" for k, v in sorted(m.envoy_ext_proc.items()))
        )
    if m.refused_during:
        notes.append(f"{m.refused_during} refused (503) during the fault")
    if m.faulted:
        notes.append("injected " + ", ".join(f"{k} x{v}" for k, v in sorted(m.faulted.items())))
    if m.max_retry_wait is not None:
        notes.append(f"longest retry wait {m.max_retry_wait:.1f} s")
    if m.repaired:
        notes.append(f"{m.repaired} acknowledged-not-stored puts repaired")
    if key == "sigterm":
        exit_cell = (
            f"{_seconds(m.drain_seconds)} (--drain-timeout {DRAIN_TIMEOUT:g}), "
            f"exit {m.drain_status}, reason: {m.drain_reason[:120] or '(empty)'}"
        )
        notes.append(f"restart on the same WAL: clean stop exit {m.exit_status}")
    if key in ("sigterm", "kill9"):
        notes.append("writer entries in the log: " + ", ".join(m.writer_events))
    elif m.exit_status != 0:
        notes.append(f"clean stop after the heal exited {m.exit_status}")
    if isinstance(m, DiskMeasured):
        recovered = (
            "never" if m.recovered_after is None else f"{m.recovered_after:.1f} s after heal"
        )
        catch_up = f"first 2xx: {recovered}"
        notes += [
            f"{m.volume} volume full after {_seconds(m.seconds_to_full)}",
            f"{m.denied_while_full} denied in {m.full_seconds:.1f} s while full, "
            f"{m.error_lines_while_full} ERROR lines",
            f"first 2xx {recovered}; then {m.ok_after_recovery}/{m.later} ok while "
            f"{m.later_bytes >> 10} KiB more entries were logged",
            f"volume used {m.used_full >> 10} KiB full, {m.used_after >> 10} KiB after",
            "WAL after: " + ", ".join(f"{k} {v >> 10} KiB" for k, v in m.wal_files.items()),
            f"server up throughout: {m.alive_after}",
        ]
    notes += m.notes
    return [lost, catch_up, refusals, verify, exit_cell, "; ".join(notes)]


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rerun issue 12's fault table and print it.")
    parser.add_argument("--seconds", type=float, default=25.0, help="fault duration (25)")
    parser.add_argument("--rate", type=float, default=60.0, help="requests/s through Envoy (60)")
    parser.add_argument(
        "--rows", default=",".join(ROW_KEYS), help=f"comma-separated, of {','.join(ROW_KEYS)}"
    )
    parser.add_argument("--s3", choices=("auto", "localstack", "moto"), default="auto")
    parser.add_argument("--volume", choices=("tmpfs", "ext4"), default="tmpfs")
    args = parser.parse_args(argv)
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(wanted) - set(ROW_KEYS)
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    rows: list[tuple[str, str, str, list[str]]] = []
    with ExitStack() as cleanup:
        base = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="fault-table-")))
        s3 = cleanup.enter_context(_s3_server(args.s3, base))
        for key, label, before in ROWS:
            if key not in wanted:
                continue
            row_dir = base / key
            row_dir.mkdir()
            _progress(f"{key}: {label}, {args.seconds:g} s at {args.rate:g} req/s")
            started = time.monotonic()
            try:
                measured = _run_row(key, s3, row_dir, args.seconds, args.rate, args.volume)
            except VolumeUnavailable as e:
                rows.append((key, label, before, ["-"] * 5 + [f"not run: {e}"]))
                _progress(f"{key}: not run: {e}")
                continue
            except Exception as e:  # one broken row must not hide the others
                rows.append((key, label, before, ["-"] * 5 + [f"ERROR: {type(e).__name__}: {e}"]))
                _progress(f"{key}: failed: {type(e).__name__}: {e}")
                continue
            rows.append((key, label, before, _cells(key, measured)))
            _progress(f"{key}: done in {time.monotonic() - started:.0f} s")
        print(f"S3: {s3.name}; fault {args.seconds:g} s, then healed; load {args.rate:g} req/s")
    print()
    header = [f"fault, {args.seconds:g} s, then healed", "result before the fixes",
              "lost acknowledged", "caught up after heal", "refusals after heal",
              "verify", "SIGTERM: exit", "measured"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for _, label, before, cells in rows:
        print("| " + " | ".join(_escape(c) for c in [label, before, *cells]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
