"""The auditor's side: read a published store and verify every log in it.

Needs only read access to the store and the verifier key. I/O lives here;
every decision is made by extproc.core.verify.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from extproc.core import layout
from extproc.core.note import Verifier
from extproc.core.verify import ERROR, Finding, LogChecker, LogReport
from extproc.errors import ObjectNotFoundError, VerificationError
from extproc.log.publisher import bundle_lines
from extproc.store.base import ObjectStore


@dataclass
class LogObjects:
    checkpoints: list[tuple[str, int]] = field(default_factory=list)
    bundles: list[tuple[str, layout.BundleName]] = field(default_factory=list)
    claims: list[tuple[str, int]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def list_logs(store: ObjectStore) -> tuple[dict[str, LogObjects], list[str]]:
    """Group every object under <prefix>/logs/ by log id; also return stray keys."""
    logs: dict[str, LogObjects] = defaultdict(LogObjects)
    stray: list[str] = []
    for obj in store.list(layout.logs_prefix(store.prefix)):
        name = layout.parse_key(store.prefix, obj.key)
        if name is None:
            stray.append(obj.key)
        elif name.kind == "checkpoint" and name.size is not None:
            logs[name.log_id].checkpoints.append((obj.key, name.size))
        elif name.kind == "bundle" and name.bundle is not None:
            logs[name.log_id].bundles.append((obj.key, name.bundle))
        elif name.kind == "claim" and name.size is not None:
            logs[name.log_id].claims.append((obj.key, name.size))
        else:
            logs[name.log_id].unknown.append(obj.key)
    return dict(logs), stray


def verify_log(
    store: ObjectStore,
    log_id: str,
    objects: LogObjects,
    verifier: Verifier,
    origin_prefix: str | None = None,
    on_entries: Callable[[int], None] | None = None,
    *,
    deep: bool = False,
) -> LogReport:
    checker = LogChecker(log_id, verifier, origin_prefix, deep=deep)
    keys = [k for k, _ in objects.checkpoints + objects.claims] + [k for k, _ in objects.bundles]
    for key in objects.unknown:
        checker.add_unknown(key)
    for key, size in objects.checkpoints:
        try:
            checker.add_checkpoint(key, size, store.get(key))
        except ObjectNotFoundError:
            checker.add_unknown(key)  # listed, then gone: report it, keep going
    for key, first in objects.claims:
        try:
            checker.add_claim(key, first, store.get(key))
        except ObjectNotFoundError:
            checker.add_unknown(key)
    for key, name in sorted(objects.bundles, key=lambda b: (b[1].first, b[1].last)):
        try:
            data = bundle_lines(store.get(key), compressed=name.gzip)
        except VerificationError as e:
            checker.report.findings.append(Finding(log_id, key, str(e)))
            data = b""
        checker.add_bundle(key, name, data)
        if on_entries is not None:
            on_entries(name.last - name.first + 1)
    if store.supports_retention:
        for key in keys:
            if store.retention(key) is None:
                checker.add_retention_missing(key)
    return checker.finish()


def verify_store(
    store: ObjectStore,
    verifier: Verifier,
    origin_prefix: str | None = None,
    *,
    parallel: int = 8,
    deep: bool = False,
) -> tuple[list[LogReport], list[Finding]]:
    """Verify every log under the store's prefix, several logs at a time."""
    logs, stray = list_logs(store)
    general = [Finding("-", key, "object under logs/ with an invalid log id") for key in stray]
    with ThreadPoolExecutor(max(1, parallel)) as pool:
        futures = [
            pool.submit(verify_log, store, log_id, objects, verifier, origin_prefix, deep=deep)
            for log_id, objects in sorted(logs.items())
        ]
        reports = [f.result() for f in futures]
    return reports, general


def all_ok(reports: list[LogReport], general: list[Finding]) -> bool:
    return (
        bool(reports)
        and all(r.ok for r in reports)
        and not any(f.severity == ERROR for f in general)
    )
