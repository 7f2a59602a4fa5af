"""The writer's witness client (`serve --witness`): have each checkpoint cosigned.

After the publisher has published a checkpoint it hands it here (`submit`,
never waits). A background task sends the newest one to every witness that
is not backing off (c2sp.org/tlog-witness add-checkpoint: the size the
witness last cosigned, a consistency proof from it, the signed note),
checks each cosignature it gets back against that witness's key, and
writes the note with the valid ones appended to `cosigned/<size>`, once,
and hands it to `on_cosigned` (serve: put at the tlog-tiles `checkpoint` if
it is still the latest there) (docs/FORMAT.md, "Witnesses"). Publication
never waits for it.

- 409 with the witness's size (text/x.tlog.size): the request is sent again
  from that size, once; a size larger than ours, another root at our size
  (409 without a size) or a proof it refuses (422) mean the witness saw
  another tree for this origin: counted as `conflict` and logged as an error.
- A witness that cannot be reached (or answers 5xx) backs off, doubling from
  1 s up to `max_backoff` seconds; checkpoints published meanwhile are not
  sent to it, and the next one after the pause carries a proof that covers them.
- Every answer is counted (`extproc_audit_witness_requests_total{witness,
  result}`); `extproc_audit_witnessed_size` is the tree size of the latest
  checkpoint a quorum cosigned.

Consistency proofs come from the leaf hashes the publisher hands over with
each checkpoint (`TreeMemory`: the tree at the oldest size a witness was last
at, and the leaves since, at most `max_leaves`); a witness further behind
gets its proof from a `ProofSource` (serve: the published entries, read
through audit/prove.py).
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from extproc import metrics
from extproc.core import layout
from extproc.core.checkpoint import Checkpoint
from extproc.core.cosignature import (
    WitnessKey,
    WitnessPolicy,
    add_signatures,
    witness_answer,
)
from extproc.core.display import escape
from extproc.core.keyring import Keyring
from extproc.core.merkle import CompactRange, compact_range_nodes, consistency_ranges, root_of
from extproc.core.note import parse_note
from extproc.core.tlogproof import ConsistencyProof
from extproc.core.witness import MAX_BODY_BYTES, SIZE_CONTENT_TYPE
from extproc.errors import AuditError, ObjectExistsError, VerificationError
from extproc.store.base import ObjectStore, RetentionPolicy

log = logging.getLogger("extproc.witness")

REQUEST_TIMEOUT_S = 10.0  # one add-checkpoint exchange, connect to answer
MAX_MEMORY_LEAVES = 1 << 20  # leaf hashes kept for proofs (32 MiB); older ones: the store
MAX_BACKOFF_S = 300.0
_MAX_ANSWER_BYTES = 64 * 1024  # a few signature lines
OK, CONFLICT, REFUSED, UNREACHABLE, BAD_COSIGNATURE = (
    "ok",
    "conflict",
    "refused",
    "unreachable",
    "bad_cosignature",
)


class ProofSource(Protocol):
    def consistency(self, old_size: int, new_size: int) -> Sequence[bytes]:
        """RFC 9162 consistency proof between two published tree sizes (blocking I/O)."""
        ...


class StoreProofs:
    """Proofs from the published log, as `prove --consistency-from` makes them (it
    reads the entries up to the newer size: leaf hashes cached between rounds)."""

    def __init__(self, store: ObjectStore, log_id: str, keyring: Keyring) -> None:
        from extproc.audit.prove import Prover

        self._prover = Prover(store, log_id, keyring)

    def consistency(self, old_size: int, new_size: int) -> Sequence[bytes]:
        return self._prover.consistency(old_size, new_size).hashes


def backoff_delay(failures: int, most: float) -> float:
    """Seconds a witness is left alone after `failures` in a row: 1, 2, 4 ... `most`."""
    return min(most, 2.0 ** min(max(failures, 1) - 1, 30))  # no float overflow, ever


class TreeMemory:
    """The tree at a base size and the leaf hashes after it: consistency proofs
    from any size at or above the base, computed without reading the store."""

    def __init__(self, max_leaves: int = MAX_MEMORY_LEAVES) -> None:
        self.max_leaves = max_leaves
        self._base = CompactRange()
        self._leaves: list[bytes] = []
        self._known = False

    @property
    def end(self) -> int:
        return self._base.size + len(self._leaves)

    def add(self, previous: CompactRange, leaves: list[bytes]) -> None:
        """The leaves published after the tree `previous` (a gap starts again from it)."""
        if not self._known or self.end != previous.size:
            self._base, self._leaves, self._known = previous.copy(), [], True
        self._leaves.extend(leaves)  # in place: a proof being computed reads a prefix
        if len(self._leaves) > self.max_leaves:
            self.forget_below(self.end - self.max_leaves)

    def forget_below(self, size: int) -> None:
        """Keep proofs from `size` on only (the witnesses are all at or past it)."""
        drop = min(size, self.end) - self._base.size
        if drop <= 0:
            return
        base = self._base.copy()
        base.extend(self._leaves[:drop])
        self._base, self._leaves = base, self._leaves[drop:]  # new objects: see proof()

    def proof(self, old: int, new: int) -> Callable[[], list[bytes]] | None:
        """A function that computes the proof from `old` to `new` (run it in a thread:
        it hashes up to `end - base` leaves); None if the memory does not reach."""
        base, leaves = self._base, self._leaves  # add() only appends; forget makes new ones
        if not self._known or not base.size <= old <= new <= base.size + len(leaves):
            return None

        def compute() -> list[bytes]:
            at_old = base.copy()
            at_old.extend(leaves[: old - base.size])
            nodes = compact_range_nodes(at_old)
            return [
                nodes[(lo, hi)] if hi <= old else root_of(leaves[lo - base.size : hi - base.size])
                for lo, hi in consistency_ranges(old, new)
            ]

        return compute


@dataclass
class _Endpoint:
    key: WitnessKey
    url: str
    known: int | None = None  # the size this witness last cosigned for our origin
    failures: int = 0
    retry_at: float = 0.0  # monotonic time before which it is not asked


class WitnessClient:
    """Cosignatures for one log's checkpoints from the witnesses of `policy`."""

    def __init__(
        self,
        policy: WitnessPolicy,
        urls: Sequence[str],
        store: ObjectStore,
        log_id: str,
        proofs: ProofSource,
        *,
        retention: RetentionPolicy | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
        max_backoff: float = MAX_BACKOFF_S,
        clock: Callable[[], float] = time.monotonic,
        on_cosigned: Callable[[bytes, bytes], Awaitable[object]] | None = None,
    ) -> None:
        self.policy = policy
        self._endpoints = [_Endpoint(k, u) for k, u in zip(policy.witnesses, urls, strict=True)]
        self.store = store
        self.log_id = log_id
        self.proofs = proofs
        self.retention = retention
        self.timeout = timeout
        self.max_backoff = max_backoff
        self._clock = clock
        # (signed note, cosigned note): serve puts it at the tlog-tiles `checkpoint`
        # if that note is still the latest there (log/tilewriter.py).
        self.on_cosigned = on_cosigned
        self._pending: tuple[Checkpoint, bytes] | None = None
        self._wake = asyncio.Event()
        self.memory = TreeMemory()
        self.witnessed_size = 0  # the latest tree size a quorum cosigned
        self.rounds = 0  # checkpoints handled (tests wait on it)

    def submit(
        self, checkpoint: Checkpoint, note: bytes, previous: CompactRange, leaves: list[bytes]
    ) -> None:
        """The newest published checkpoint (only the newest waits to be sent), the
        tree at the one before and the leaf hashes since."""
        self.memory.add(previous, leaves)
        self._pending = (checkpoint, note)
        self._wake.set()

    async def run(self) -> None:
        """Send each newest checkpoint, one round at a time, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending is None:
                continue
            checkpoint, note = self._pending
            self._pending = None
            try:
                await self._round(checkpoint, note)
            except asyncio.CancelledError:
                if self._pending is None:  # stopped mid-round: flush() sends it again
                    self._pending = (checkpoint, note)
                raise

    async def flush(self) -> None:
        """Send the checkpoint still waiting, if any (shutdown: the final one)."""
        if self._pending is not None:
            checkpoint, note = self._pending
            self._pending = None
            await self._round(checkpoint, note)

    async def _round(self, checkpoint: Checkpoint, note: bytes) -> None:
        try:
            await self.cosign(checkpoint, note)
        except Exception:  # a fault in one round must not end the rounds, nor the drain
            log.exception("witness round for tree size %d failed", checkpoint.size)

    async def cosign(self, checkpoint: Checkpoint, note: bytes) -> list[str]:
        """One round: ask every witness not backing off, publish what came back."""
        now = self._clock()
        asked = [e for e in self._endpoints if e.retry_at <= now]
        answers = await asyncio.gather(*(self._ask(e, checkpoint, note) for e in asked))
        lines = [line for got in answers for line in got]
        if lines:
            await asyncio.to_thread(self._publish, checkpoint.size, note, lines)
            if self.on_cosigned is not None:
                await self.on_cosigned(note, add_signatures(note, lines))
        text, _ = parse_note(note)
        _, signatures = parse_note(note + "".join(lines).encode())
        quorum = self.policy.quorum_evidence(self.policy.cosignatures(text, signatures))
        if quorum is not None and checkpoint.size >= self.witnessed_size:
            self.witnessed_size = checkpoint.size
            metrics.WITNESSED_SIZE.set(checkpoint.size)
        known = [e.known for e in self._endpoints if e.known is not None]
        self.memory.forget_below(min(known, default=checkpoint.size))
        self.rounds += 1
        return lines

    async def _ask(self, endpoint: _Endpoint, checkpoint: Checkpoint, note: bytes) -> list[str]:
        """The cosignature lines of one witness for this checkpoint ([] if none)."""
        name = endpoint.key.name
        for _ in range(2):  # a 409 with the witness's size is answered once
            old = endpoint.known or 0
            if old > checkpoint.size:
                return self._count(endpoint, CONFLICT, f"has cosigned size {old}, beyond ours")
            try:
                hashes = await self._proof(old, checkpoint.size)
                body = ConsistencyProof(old, tuple(hashes), note).to_text().encode()
                status, content_type, answer = await asyncio.to_thread(
                    self._post, endpoint.url, body
                )
            except (OSError, http.client.HTTPException) as e:
                self._back_off(endpoint)
                return self._count(endpoint, UNREACHABLE, f"{type(e).__name__}: {e}")
            except AuditError as e:  # no proof from that size (the store, or its bound)
                endpoint.known = None
                self._back_off(endpoint)
                return self._count(endpoint, UNREACHABLE, f"no consistency proof: {e}")
            if status == 409 and content_type.startswith(SIZE_CONTENT_TYPE):
                size = answer.strip()
                if not size.isdigit() or len(size) > 20:
                    return self._count(endpoint, REFUSED, "409 with a malformed size")
                endpoint.known = int(size)
                continue
            if status == 200:
                return self._accept(endpoint, checkpoint, note, answer)
            if status >= 500:
                self._back_off(endpoint)
                return self._count(endpoint, UNREACHABLE, f"HTTP {status}")
            result = CONFLICT if status in (409, 422) else REFUSED
            return self._count(endpoint, result, f"HTTP {status}: {escape(answer[:200])}")
        return self._count(endpoint, CONFLICT, f"{name}: 409 twice (its size moves)")

    async def _proof(self, old: int, new: int) -> Sequence[bytes]:
        if not 0 < old < new:
            return ()
        compute = self.memory.proof(old, new)
        if compute is not None:
            return await asyncio.to_thread(compute)
        return await asyncio.to_thread(self.proofs.consistency, old, new)

    def _accept(
        self, endpoint: _Endpoint, checkpoint: Checkpoint, note: bytes, answer: str
    ) -> list[str]:
        text, _ = parse_note(note)
        try:
            lines = witness_answer(answer, endpoint.key, text)
        except VerificationError as e:
            return self._count(endpoint, BAD_COSIGNATURE, str(e))
        endpoint.known = checkpoint.size
        endpoint.failures = 0
        self._count(endpoint, OK, "")
        return lines[:1]

    def _count(self, endpoint: _Endpoint, result: str, why: str) -> list[str]:
        metrics.WITNESS_REQUESTS.labels(endpoint.key.name, result).inc()
        if result == CONFLICT:
            log.error("WITNESS %s refused our checkpoint: %s (another tree shown to it?)",
                      escape(endpoint.key.name), why)  # fmt: skip
        elif result != OK:
            log.warning("witness %s: %s: %s", escape(endpoint.key.name), result, why)
        return []

    def _back_off(self, endpoint: _Endpoint) -> None:
        endpoint.failures += 1
        delay = backoff_delay(endpoint.failures, self.max_backoff)
        endpoint.retry_at = self._clock() + delay

    def _post(self, url: str, body: bytes) -> tuple[int, str, str]:
        """POST <url>/add-checkpoint; (status, content type, body as text), bounded."""
        parts = urllib.parse.urlsplit(url + "/add-checkpoint")
        conn_type = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        if len(body) > MAX_BODY_BYTES:
            raise http.client.HTTPException("request over the witness's body bound")
        conn = conn_type(parts.netloc, timeout=self.timeout)
        try:
            conn.request("POST", parts.path, body, {"Content-Type": "text/plain"})
            response = conn.getresponse()
            data = response.read(_MAX_ANSWER_BYTES + 1)
            if len(data) > _MAX_ANSWER_BYTES:
                raise http.client.HTTPException("answer over its bound")
            content_type = response.getheader("Content-Type", "")
            return response.status, content_type, data.decode("utf-8", "replace")
        finally:
            conn.close()

    def _publish(self, size: int, note: bytes, lines: list[str]) -> None:
        """Write cosigned/<size> once; an object already there is left as it is."""
        key = layout.cosigned_key(self.store.prefix, self.log_id, size)
        try:
            retention = self.retention.until(datetime.now(UTC)) if self.retention else None
            self.store.put_once(key, add_signatures(note, lines), retention)
        except ObjectExistsError:
            log.warning("%s exists: cosignatures of tree size %d not written again", key, size)
            return
        except AuditError as e:
            log.warning("cosigned checkpoint %s not written: %s", key, e)
            return
        metrics.OBJECTS_WRITTEN.labels("cosigned").inc()
