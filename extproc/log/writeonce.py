"""Write once, confirmed: how the publisher puts an object in the store.

An object counts as written only once the store shows it back with our
SHA-256 (a store that answered 200 and kept nothing gets the put again, still
write-once). An object already at the key is judged by the caller: ours (an
earlier attempt whose reply was lost), another writer's of this log (FORK:
publication stops for good) or foreign (a planted object: the publisher
records it and steps over it, extproc/log/publisher.py). Store errors are
retried with capped, jittered backoff; while the log refuses requests the
store is probed every second, so refusals end soon after the store is back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from extproc import metrics
from extproc.errors import (
    ForeignObjectError,
    ForkError,
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
    VerificationError,
)
from extproc.log.appender import AuditLog
from extproc.log.foreign import ForeignKeys
from extproc.store.base import CONFIRMED, DIFFERENT, MISSING, ObjectStore, RetentionPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")

# What an object found at a key we must write is.
OURS, FORK, FOREIGN = "ours", "fork", "foreign"
PROBE_WHILE_DENYING = 1.0  # seconds between store retries while requests are refused


def backoff_delay(attempt: int, cap: float) -> float:
    """Seconds before retry `attempt` (from 1): doubling from 0.4 s, at most `cap`."""
    return min(cap, 0.2 * 2.0 ** min(attempt, 20))


def same_bytes(data: bytes) -> Callable[[bytes], str]:
    """A judge for objects whose only right form is these bytes."""
    return lambda existing: OURS if existing == data else FOREIGN


class WriteOnce:
    """Puts of one log's objects: each written once and confirmed."""

    def __init__(
        self,
        store: ObjectStore,
        audit_log: AuditLog,
        foreign: ForeignKeys,
        *,
        log_id: str,
        retention: RetentionPolicy | None,
        retry_max_delay: float,
        threads: int = 2,
    ) -> None:
        self._store = store
        self._log = audit_log
        self._log_id = log_id
        self._retention = retention
        self._retry_max_delay = retry_max_delay
        self.foreign = foreign  # keys known to hold foreign objects: never put
        # Keys confirmed since the publisher last cleared it (its last checkpoint).
        self.written: set[str] = set()
        self.last_error = ""  # the latest store error, for the shutdown message
        # Store and state-file calls block: a small pool of our own, not the
        # loop's default executor, keeps the thread (and malloc arena) count
        # flat over days of uptime.
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="publish")

    def io(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run a blocking store (or state-file) call on the pool."""
        return asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    async def put(
        self,
        key: str,
        data: bytes,
        kind: str,
        judge: Callable[[bytes], str],
        limit: int | None = None,
    ) -> None:
        """Write once and confirm it, retrying store errors with capped backoff.

        A write counts only once the store shows the object back with our
        SHA-256: a store that answered 200 and kept nothing (measured) gets
        the put again, still write-once. An object already at the key is
        judged: ours (an earlier attempt whose reply was lost), foreign, or
        another writer's. It is read only up to `limit` bytes (default: the
        size of ours): anything larger is foreign without being read.
        """
        if key in self.foreign:
            raise ForeignObjectError(key, f"{kind} key already known to be taken")
        sha256 = hashlib.sha256(data).digest()
        attempt = 0
        while True:
            try:
                retention = None
                if self._retention is not None:
                    retention = self._retention.until(datetime.now(UTC))
                await self.io(self._store.put_once, key, data, retention)
                found = await self.io(self._store.confirm, key, sha256)
            except ObjectExistsError:
                found = DIFFERENT
            except StorageError as e:
                attempt += 1
                await self.backoff(key, attempt, e)
                continue
            if found is CONFIRMED:
                metrics.OBJECTS_WRITTEN.labels(kind).inc()
                metrics.OBJECTS_CONFIRMED.labels(kind).inc()
                self.written.add(key)
                return
            if found is MISSING:
                # Acknowledged, not stored: write it again from what we hold.
                metrics.OBJECTS_REPAIRED.labels(kind).inc()
                attempt += 1
                await self.backoff(
                    key,
                    attempt,
                    StorageError(f"{key}: the store acknowledged it but has no such object"),
                )
                continue
            try:
                existing = await self.io(self._store.get, key, limit or len(data))
            except ObjectNotFoundError:
                continue  # gone again: write it
            except VerificationError as e:  # over the bound, not a file: not ours
                raise ForeignObjectError(key, f"not a {kind} of this log's writer") from e
            except StorageError as e:
                attempt += 1
                await self.backoff(key, attempt, e)
                continue
            verdict = judge(existing)
            if verdict == OURS:
                # An earlier attempt whose reply was lost: it was written, and read back.
                log.info("%s already written by an earlier attempt of ours", key)
                metrics.OBJECTS_WRITTEN.labels(kind).inc()
                metrics.OBJECTS_CONFIRMED.labels(kind).inc()
                self.written.add(key)
                return
            if verdict == FOREIGN:
                raise ForeignObjectError(key, f"not a {kind} by this log's key")
            raise ForkError(
                f"{key}: another writer's object is where log {self._log_id} "
                "must write; stopping publication (a log id belongs to one writer)"
            )

    async def backoff(self, what: str, attempt: int, error: StorageError) -> None:
        metrics.PUBLISH_ERRORS.inc()
        self.last_error = str(error)
        delay = backoff_delay(attempt, self._retry_max_delay)
        delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto
        if self._log.refusing(within=2 * PROBE_WHILE_DENYING):
            # Requests are refused until a write gets through (the backlog is
            # over its bound, or the disk is full and only publication frees
            # it): probe every second, so that the refusals end within a second
            # of the store's return, not after the backoff (up to --retry-max-delay).
            delay = min(delay, PROBE_WHILE_DENYING)
        log.warning(
            "publish %s failed (attempt %d), retrying in %.1fs: %s", what, attempt, delay, error
        )
        # Refusals can begin during a long wait (the bound is reached, the disk
        # fills): from then on the next probe is at most a second away.
        until = time.monotonic() + delay
        while (left := until - time.monotonic()) > 0:
            await asyncio.sleep(min(left, PROBE_WHILE_DENYING))
            if self._log.refusing(within=2 * PROBE_WHILE_DENYING):
                break
