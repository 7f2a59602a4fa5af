"""The log core in-process, next to its floors (scripts/bench.py): entries/s
through the appender (with and without fsync) and through verify, against
plain SHA-256 over the same lines."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

from hostile_messages import NORMAL_HEADERS

from extproc.core import entry as entry_codec
from extproc.core.fields import KIND, KIND_REQUEST
from extproc.core.merkle import leaf_hash
from extproc.core.note import Signer
from extproc.core.redact import RedactionPolicy
from extproc.log.appender import AuditLog
from extproc.log.wal import WAL, Recovered, TreeState
from extproc.server.capture import Capturer


def sample_fields() -> dict[str, Any]:
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    msg = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=k, raw_value=v.encode())
                    for k, v in NORMAL_HEADERS.items()
                ]
            )
        )
    )
    fields = Capturer(RedactionPolicy()).request(msg)
    fields[KIND] = KIND_REQUEST
    return fields


def bench_append(entries: int, sync: bool, directory: Path) -> float:
    """Entries/s through the appender (seq, prev, encode, leaf hash, WAL) on one core."""
    template = sample_fields()

    async def run() -> float:
        wal = WAL(directory, sync=sync)
        log = AuditLog(wal, Recovered(TreeState()), max_backlog_bytes=1 << 40)
        started = time.perf_counter()
        for _ in range(entries):
            log.append_nowait(dict(template))
            if log.size - log.durable_size > 4096:
                await log.wait_durable(log.size - 4097)
        await log.flush()
        elapsed = time.perf_counter() - started
        log.close()
        return entries / elapsed

    return asyncio.run(run())


def bench_verify(entries: int) -> tuple[float, float]:
    """verify entries/s over one log, and plain SHA-256 entries/s over the same lines."""
    from extproc.core.checkpoint import Checkpoint, make_extensions, sign_checkpoint
    from extproc.core.claim import Claim
    from extproc.core.layout import BundleName
    from extproc.core.merkle import CompactRange
    from extproc.core.verify import LogChecker

    template = sample_fields()
    lines, prev, tree = [], "", CompactRange()
    for seq in range(entries):
        fields = dict(template, v=1, seq=seq, prev=prev, ts="2026-11-26T16:34:36.572195Z")
        line = entry_codec.encode(fields)
        leaf = leaf_hash(line)
        tree.append(leaf)
        prev = leaf.hex()
        lines.append(line)
    signer = Signer.generate("bench")
    bundle = 10_000
    chunks = [lines[i : i + bundle] for i in range(0, entries, bundle)]
    data = [b"\n".join(c) + b"\n" for c in chunks]
    claims, first = {}, 0
    for chunk in chunks:
        last = first + len(chunk) - 1
        claims[first] = Claim(first, last, leaf_hash(chunk[-1]).hex(), "w").to_bytes()
        first = last + 1
    cp = sign_checkpoint(
        Checkpoint("bench/log", entries, tree.root(), make_extensions(1, "ab")), signer
    )

    started = time.perf_counter()
    checker = LogChecker("log", signer.verifier())
    checker.add_checkpoint("cp", entries, cp)
    # Every claim first, then the bundles in order (LogChecker's contract).
    for first, claim in claims.items():
        checker.add_claim(f"claims/{first}", first, claim)
    first = 0
    for chunk, blob in zip(chunks, data, strict=True):
        name = BundleName(first, first + len(chunk) - 1, False)
        checker.add_bundle("bundle", name, blob)
        first += len(chunk)
    report = checker.finish()
    verify_rate = entries / (time.perf_counter() - started)
    assert report.ok and report.entries == entries, report.findings[:3]

    started = time.perf_counter()
    sha256 = hashlib.sha256
    for line in lines:
        sha256(line).digest()
    sha_rate = entries / (time.perf_counter() - started)
    return verify_rate, sha_rate


def log_core(work: Path, n: int) -> dict[str, float]:
    """Append and verify throughput in-process, each next to its floor."""
    print("\nlog core (one core, in-process):")
    nosync = bench_append(n, False, work / "wal-nosync")
    synced = bench_append(n, True, work / "wal-sync")
    verify_rate, sha_rate = bench_verify(n)
    print(f"  append, no fsync        {nosync:>10,.0f} entries/s")
    print(f"  append, fsync per batch {synced:>10,.0f} entries/s")
    print(
        f"  verify                  {verify_rate:>10,.0f} entries/s "
        f"({verify_rate / sha_rate:.2f}x of plain SHA-256 over the same lines, "
        f"{sha_rate:,.0f}/s)"
    )
    return {
        "append_nosync": nosync,
        "append_sync": synced,
        "verify": verify_rate,
        "sha256": sha_rate,
    }
