"""The live proof API (protos/extproc/api/proof.proto) on its own gRPC port.

Answers come from the store, through extproc.audit.prove, exactly as an offline
`prove` would make them: only published entries under signed checkpoints are
provable, and the client verifies everything with the log's verifier key.
Store reads block, so they run on a small thread pool of this module's own,
never on the event loop. Memory is bounded by the prover's LeafCache (32
bytes per cached leaf) plus one proof's leaf list per request in flight.

Access control: the port is off unless `--proof-listen` is given, and is
separate from the ext_proc port, which every workload in the mesh can reach.
It serves reads of every log under the writer's store prefix (with
`--workers` the workers share the port and any of them answers for all).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from extproc.api import proof_pb2 as pb
from extproc.api import proof_pb2_grpc as pb_grpc
from extproc.audit.prove import (
    DEFAULT_CACHE_LEAVES,
    AmbiguousRequestIdError,
    EntryNotFoundError,
    LeafCache,
    Prover,
)
from extproc.core.note import Verifier
from extproc.errors import AuditError, ConfigError, StorageError, VerificationError
from extproc.store.base import ObjectStore

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICE_NAME = "extproc_audit.v1.ProofService"


def _status(error: AuditError) -> grpc.StatusCode:
    if isinstance(error, AmbiguousRequestIdError):
        # Several entries carry the request id: none is picked; the details
        # name their seqs (at most MAX_LISTED_MATCHES), to ask again by seq.
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(error, EntryNotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, ConfigError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, VerificationError):
        return grpc.StatusCode.DATA_LOSS  # the published log itself does not verify
    if isinstance(error, StorageError):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def _signed(log_id: str, size: int, note: bytes) -> pb.SignedCheckpoint:
    return pb.SignedCheckpoint(log_id=log_id, tree_size=size, note=note)


class ProofServicer:
    """Implements extproc_audit.v1.ProofService over one store."""

    def __init__(
        self,
        store: ObjectStore,
        log_id: str,
        verifier: Verifier,
        *,
        cache_leaves: int = DEFAULT_CACHE_LEAVES,
        threads: int = 2,
    ) -> None:
        self.store = store
        self.log_id = log_id  # the default: the serving writer's own log
        self.verifier = verifier
        self.cache = LeafCache(cache_leaves)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="proof")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _prover(self, log_id: str) -> Prover:
        return Prover(self.store, log_id or self.log_id, self.verifier, self.cache)

    async def _run(self, context: Any, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        except AuditError as e:
            await context.abort(_status(e), str(e))
            raise AssertionError("abort returned") from e  # abort always raises

    async def GetLatestCheckpoint(  # gRPC method names are the proto's
        self, request: pb.GetLatestCheckpointRequest, context: Any
    ) -> pb.SignedCheckpoint:
        prover = await self._run(context, lambda: self._prover(request.log_id))
        cp, note = await self._run(context, prover.latest_checkpoint)
        return _signed(prover.log_id, cp.size, note)

    async def GetInclusionProof(
        self, request: pb.GetInclusionProofRequest, context: Any
    ) -> pb.InclusionProof:
        which = request.WhichOneof("entry")
        if which is None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "name the entry: seq or request_id"
            )
        seq = request.seq if which == "seq" else None
        rid = request.request_id if which == "request_id" else None
        tree_size = request.tree_size or None
        prover = await self._run(context, lambda: self._prover(request.log_id))
        inc = await self._run(
            context, lambda: prover.inclusion(seq=seq, request_id=rid, tree_size=tree_size)
        )
        return pb.InclusionProof(
            log_id=inc.log_id,
            index=inc.index,
            entry=inc.entry,
            hashes=list(inc.hashes),
            checkpoint=_signed(inc.log_id, inc.checkpoint.size, inc.note),
            tlog_proof=inc.to_proof().to_text(),
        )

    async def GetConsistencyProof(
        self, request: pb.GetConsistencyProofRequest, context: Any
    ) -> pb.ConsistencyProof:
        second = request.second or None
        prover = await self._run(context, lambda: self._prover(request.log_id))
        proof = await self._run(context, lambda: prover.consistency(request.first, second))
        reply = pb.ConsistencyProof(
            log_id=proof.log_id, first=proof.first, second=proof.second, hashes=list(proof.hashes)
        )
        if proof.first_note is not None:
            reply.first_checkpoint.CopyFrom(_signed(proof.log_id, proof.first, proof.first_note))
        if proof.second_note is not None:
            reply.second_checkpoint.CopyFrom(_signed(proof.log_id, proof.second, proof.second_note))
        return reply


class ProofServer:
    """The proof API's own gRPC server, started and stopped with the writer."""

    def __init__(self, servicer: ProofServicer, *, reuse_port: bool = False) -> None:
        self.servicer = servicer
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuse_port))])
        pb_grpc.add_ProofServiceServicer_to_server(servicer, self.server)
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        try:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as e:
            raise ConfigError(f"cannot listen on proof API address {host}:{port}: {e}") from e
        await self.server.start()
        log.info("serving proof API on %s:%d (store reads, no auth: keep it private)", host, port)
        return self.port

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)
        self.servicer.close()
