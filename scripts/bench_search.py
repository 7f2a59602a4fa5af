"""Benchmark `extproc-audit search` against the least any JSON search can do.

Writes a synthetic, valid, signed log (enforce mode: a request entry and a
response entry per exchange, realistic headers, ~700 bytes an entry, bundles
of 10,000, timestamps spread over one day) to a local directory, then times,
in the same run, a baseline (read every bundle, split lines, orjson.loads each)
and several searches. Prints a Markdown table for docs/SEARCH.md.

    .venv/bin/python scripts/bench_search.py --entries 1000000 [--dir DIR] [--gzip]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson

from extproc.audit.reader import entry_lines
from extproc.audit.search import Filters, StoreSearch, parse_status, parse_time
from extproc.core import entry, layout
from extproc.core.bundle import bundle_bytes
from extproc.core.checkpoint import Checkpoint, make_extensions, sign_checkpoint
from extproc.core.claim import Claim
from extproc.core.merkle import CompactRange, leaf_hash
from extproc.core.note import Signer
from extproc.store.local import LocalStore

LOG_ID = "bench-0"
WRITER = "be4c"  # a writer id: lower-case hex (the checkpoint extension's rule)
DAY = datetime(2026, 11, 26, tzinfo=UTC).timestamp()
BUNDLE = 10_000
PATHS = ("/api/orders", "/api/users/42", "/api/cart/items", "/health", "/admin/settings")


def _request(i: int) -> dict[str, object]:
    return {
        "kind": "request",
        "rid": f"{i:08x}-6f1c-4c0e-9a55-{i * 7919 % 10**12:012d}",
        "req": {
            "method": "POST" if i % 5 == 0 else "GET",
            "scheme": "https",
            "authority": "shop.example.com",
            "path": PATHS[i % len(PATHS)],
            "protocol": "HTTP/2",
            "headers": {
                "accept": "application/json",
                "authorization": "Bearer [redacted]",
                "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0",
                "x-b3-traceid": f"{i * 2654435761 % 2**64:016x}",
                "x-forwarded-proto": "https",
            },
        },
        "src": {
            "address": f"10.0.{i % 250}.{i % 200}:4{i % 10000:04d}",
            "principal": f"spiffe://cluster.local/ns/shop/sa/{('web', 'cron', 'api')[i % 3]}",
        },
        "dst": "10.0.9.9:8080",
        "node": "sidecar~10.0.9.9~shop-7d9f.shop~shop.svc.cluster.local",
    }


def _response(i: int, ref: int) -> dict[str, object]:
    return {
        "kind": "response",
        "ref": ref,
        "rid": f"{i:08x}-6f1c-4c0e-9a55-{i * 7919 % 10**12:012d}",
        "resp": {
            "status": 500 if i % 97 == 0 else (404 if i % 13 == 0 else 200),
            "headers": {"content-length": str(100 + i % 900), "content-type": "application/json"},
        },
    }


def write_log(store: LocalStore, signer: Signer, entries: int, *, gzip: bool) -> str:
    """Entries 2k and 2k+1 are exchange k's request and response; returns one rid."""
    tree, prev, lines = CompactRange(), "", []
    origin = layout.origin_for("extproc-audit", LOG_ID)
    step = 86_400 / entries
    probe = ""
    for seq in range(entries):
        k = seq // 2
        fields = _request(k) if seq % 2 == 0 else _response(k, seq - 1)
        fields.update(v=entry.FORMAT_VERSION, seq=seq, prev=prev)
        at = datetime.fromtimestamp(DAY + seq * step, UTC)
        fields["ts"] = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        line = entry.encode(fields)
        leaf = leaf_hash(line)
        prev = leaf.hex()
        tree.append(leaf)
        lines.append(line)
        if seq == entries // 2:
            probe = str(fields["rid"])
        if len(lines) == BUNDLE or seq == entries - 1:
            first = seq - len(lines) + 1
            claim = Claim(first, seq, prev, WRITER)
            store.put_once(layout.claim_key(store.prefix, LOG_ID, first), claim.to_bytes(), None)
            key = layout.bundle_key(store.prefix, LOG_ID, first, seq, gzip=gzip)
            store.put_once(key, bundle_bytes(lines, compress=gzip), None)
            cp = Checkpoint(origin, seq + 1, tree.root(), make_extensions(0, WRITER))
            store.put_once(
                layout.checkpoint_key(store.prefix, LOG_ID, seq + 1),
                sign_checkpoint(cp, signer),
                None,
            )
            lines = []
    return probe


def baseline(store: LocalStore) -> int:
    """Read, split and parse every entry: what any JSON search must do at least."""
    count = 0
    for line in entry_lines(store, LOG_ID):
        orjson.loads(line)
        count += 1
    return count


REPEAT = 3  # best of 3: other load on the machine only ever adds time


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    best, result = float("inf"), 0
    for _ in range(REPEAT):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="store directory (default: temp)")
    parser.add_argument("--gzip", action="store_true", help="write .jsonl.gz bundles")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp) / "store"
        store = LocalStore(root)
        signer = Signer.generate("bench")
        start = time.perf_counter()
        probe = write_log(store, signer, args.entries, gzip=args.gzip)
        print(
            f"wrote {args.entries} entries in {time.perf_counter() - start:.1f} s", file=sys.stderr
        )
        size = sum(p.stat().st_size for p in root.rglob("*.jsonl*"))
        base_s, n = timed(lambda: baseline(store))
        assert n == args.entries, n

        def run(filters: Filters, *, verify: bool) -> Callable[[], int]:
            def go() -> int:
                search = StoreSearch(store, filters, verifier=signer.verifier() if verify else None)
                count = sum(1 for _ in search.matches())
                if verify:
                    assert all(r.ok for r in search.stats.reports), search.stats.reports
                return count

            return go

        hour = Filters(
            since=parse_time("2026-11-26T12:00:00Z"), until=parse_time("2026-11-26T13:00:00Z")
        )
        cases = [
            ("--status 5xx --no-verify", Filters(status=parse_status("5xx")), False),
            ("--status 5xx (verified)", Filters(status=parse_status("5xx")), True),
            (
                "--path '/admin/*' --status 5xx (verified)",
                Filters(path="/admin/*", status=parse_status("5xx")),
                True,
            ),
            ("--request-id RID (verified)", Filters(request_id=probe), True),
            ("one hour --no-verify", hour, False),
        ]
        print(
            f"{args.entries:,} entries, {size / 1e6:.0f} MB of "
            f"{'gzip ' if args.gzip else ''}bundles, local disk (page cache warm), "
            f"best of {REPEAT}\n"
        )
        print("| run | seconds | entries/s | vs baseline | matches |")
        print("|---|---:|---:|---:|---:|")
        print(
            f"| baseline: read + orjson.loads every line | {base_s:.2f} | "
            f"{args.entries / base_s:,.0f} | 1.00 | - |"
        )
        for label, filters, verify in cases:
            seconds, matches = timed(run(filters, verify=verify))
            print(
                f"| search {label} | {seconds:.2f} | {args.entries / seconds:,.0f} | "
                f"{seconds / base_s:.2f} | {matches:,} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
