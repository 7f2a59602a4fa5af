"""The live proof API over real gRPC on 127.0.0.1: what it answers, how it fails,
and that its proofs verify with the RFC 9162 reference (tests/unit/test_merkle.py)
and offline with check-proof, never trusting the server.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from extproc import processes
from extproc.api import proof_pb2 as pb
from extproc.api import proof_pb2_grpc as pb_grpc
from extproc.core.checkpoint import open_checkpoint
from extproc.core.merkle import leaf_hash, verify_consistency, verify_inclusion
from extproc.core.note import Signer
from extproc.core.tlogproof import TlogProof, verify_proof
from extproc.server.proofapi import ProofServer, ProofServicer
from extproc.store.local import LocalStore
from tests.conftest import read_entries, run_cli
from tests.helpers import read_lines, run
from tests.integration.test_prover import (
    FLOOD,
    LOG_ID,
    SIZES,
    write_duplicates_log,
    write_log,
)
from tests.unit.test_merkle import ref_mth, ref_path, ref_proof

T = TypeVar("T")


async def serving(store: LocalStore, signer: Signer) -> AsyncIterator[Any]:
    servicer = ProofServicer(store, LOG_ID, signer.verifier(), cache_leaves=30)
    server = ProofServer(servicer)
    port = await server.start("127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.ProofServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(0)


def with_api(
    tmp_path: Path, signer: Signer, body: Callable[[Any, list[bytes]], Awaitable[None]]
) -> None:
    store = LocalStore(tmp_path / "store")
    write_log(store, tmp_path / "wal", signer)
    entries = read_lines(store, LOG_ID)

    async def scenario() -> None:
        async for stub in serving(store, signer):
            await body(stub, entries)

    run(scenario, timeout=60)


def test_latest_checkpoint_is_the_published_note(tmp_path: Path, signer: Signer) -> None:
    async def body(stub: Any, entries: list[bytes]) -> None:
        reply = await stub.GetLatestCheckpoint(pb.GetLatestCheckpointRequest())
        assert (reply.log_id, reply.tree_size) == (LOG_ID, SIZES[-1])
        cp = open_checkpoint(reply.note, signer.verifier())
        assert cp.root_hash == ref_mth(entries)

    with_api(tmp_path, signer, body)


def test_every_inclusion_proof_verifies(tmp_path: Path, signer: Signer) -> None:
    """Every entry, by seq, at both signed sizes; the LRU cache (30 leaves) is
    smaller than the log, so bundles are evicted and re-read along the way."""

    async def body(stub: Any, entries: list[bytes]) -> None:
        for size in SIZES:
            for seq in range(size):
                req = pb.GetInclusionProofRequest(seq=seq, tree_size=size)
                reply = await stub.GetInclusionProof(req)
                assert reply.entry == entries[seq]
                assert list(reply.hashes) == ref_path(seq, entries[:size])
                cp = open_checkpoint(reply.checkpoint.note, signer.verifier())
                assert cp.size == size
                verify_inclusion(leaf_hash(reply.entry), seq, size, reply.hashes, cp.root_hash)
                proof = TlogProof.from_text(reply.tlog_proof)
                assert verify_proof(proof, signer.verifier()) == cp

    with_api(tmp_path, signer, body)


def test_inclusion_by_request_id(tmp_path: Path, signer: Signer) -> None:
    async def body(stub: Any, entries: list[bytes]) -> None:
        reply = await stub.GetInclusionProof(pb.GetInclusionProofRequest(request_id="req-7"))
        assert (reply.index, reply.entry) == (7, entries[7])
        assert reply.checkpoint.tree_size == SIZES[-1]

    with_api(tmp_path, signer, body)


def test_every_consistency_proof_verifies(tmp_path: Path, signer: Signer) -> None:
    async def body(stub: Any, entries: list[bytes]) -> None:
        second = SIZES[-1]
        for first in range(second + 1):
            reply = await stub.GetConsistencyProof(pb.GetConsistencyProofRequest(first=first))
            assert (reply.first, reply.second) == (first, second)
            # RFC 9162 PROOF is defined for 0 < m < n; the empty proof otherwise.
            expected = ref_proof(first, entries) if 0 < first < second else []
            assert list(reply.hashes) == expected
            old, new = ref_mth(entries[:first]), ref_mth(entries)
            verify_consistency(first, second, old, new, reply.hashes)
            assert reply.HasField("first_checkpoint") == (first in SIZES)
        reply = await stub.GetConsistencyProof(pb.GetConsistencyProofRequest(first=3, second=20))
        assert list(reply.hashes) == ref_proof(3, entries[:20])

    with_api(tmp_path, signer, body)


@pytest.mark.parametrize(
    ("request_", "code", "match"),
    [
        (pb.GetInclusionProofRequest(seq=SIZES[-1]), grpc.StatusCode.NOT_FOUND, "not published"),
        (pb.GetInclusionProofRequest(request_id="x"), grpc.StatusCode.NOT_FOUND, "request id"),
        (pb.GetInclusionProofRequest(), grpc.StatusCode.INVALID_ARGUMENT, "seq or request_id"),
        (
            pb.GetInclusionProofRequest(seq=1, tree_size=26),
            grpc.StatusCode.NOT_FOUND,
            "size 26",
        ),
        (
            pb.GetInclusionProofRequest(log_id="../x", seq=1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid log id",
        ),
        (
            pb.GetInclusionProofRequest(log_id="pod-b", seq=1),
            grpc.StatusCode.NOT_FOUND,
            "log pod-b not found",
        ),
        (
            pb.GetConsistencyProofRequest(first=10, second=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "first <= second",
        ),
        (
            pb.GetConsistencyProofRequest(first=1, second=48),
            grpc.StatusCode.NOT_FOUND,
            "not published yet",
        ),
    ],
    ids=[
        "unknown-seq",
        "unknown-rid",
        "no-entry",
        "no-such-checkpoint",
        "bad-log-id",
        "unknown-log",
        "sizes-reversed",
        "future-size",
    ],
)
def test_errors_map_to_grpc_status(
    tmp_path: Path, signer: Signer, request_: Any, code: grpc.StatusCode, match: str
) -> None:
    async def body(stub: Any, entries: list[bytes]) -> None:
        call = (
            stub.GetInclusionProof
            if isinstance(request_, pb.GetInclusionProofRequest)
            else stub.GetConsistencyProof
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(request_)
        assert info.value.code() == code
        assert match in (info.value.details() or "")

    with_api(tmp_path, signer, body)


# --- the real server -------------------------------------------------------------------------


@pytest.mark.envoy
def test_served_by_the_writer_with_envoy_traffic(make_stack: Any, tmp_path: Path) -> None:
    """`serve --proof-listen`: requests through Envoy, then a proof by request id
    from the live API, checked offline by check-proof with the verifier key."""
    proof_port = processes.free_port()
    stack = make_stack(extra_args=["--proof-listen", f"127.0.0.1:{proof_port}"]).start()
    result = stack.send(20)
    assert result.errors == 0 and sum(result.statuses.values()) == 20, result
    rid = result.request_ids[7]  # the client's x-request-id, recorded as `rid`
    signer = Signer.from_text(stack.key_path.read_text())

    async def scenario() -> tuple[Any, Any]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proof_port}") as channel:
            stub = pb_grpc.ProofServiceStub(channel)
            for _ in range(200):  # published within --bundle-max-age 0.2 s; 20 s at most
                latest = await stub.GetLatestCheckpoint(pb.GetLatestCheckpointRequest())
                if latest.tree_size >= 41:  # start entry, 20 requests, 20 responses
                    break
                await asyncio.sleep(0.1)
            reply = await stub.GetInclusionProof(pb.GetInclusionProofRequest(request_id=rid))
            return latest, reply

    latest, reply = run(scenario, timeout=60)
    assert latest.tree_size >= 41
    published = read_entries(stack.store_url, "e2e")
    assert published[reply.index]["rid"] == rid
    assert published[reply.index]["kind"] == "request"
    assert stack.grpc_port != proof_port  # ext_proc's port does not serve proofs
    path = tmp_path / "live.tlog-proof"
    path.write_text(reply.tlog_proof)
    r = run_cli("check-proof", str(path), "--vkey", signer.verifier().to_text())
    assert r.returncode == 0, r.stderr
    assert base64.b64encode(reply.entry).decode() in reply.tlog_proof
    assert stack.stop_server() == 0


def test_inclusion_by_forged_duplicate_request_id_is_failed_precondition(
    tmp_path: Path, signer: Signer
) -> None:
    """Two entries carry request id "dup" (the second from another reporter):
    the API names both seqs and proves neither; a request id carried by one
    request entry (and its response) is still proven."""
    store = LocalStore(tmp_path / "store")
    entries = write_duplicates_log(store, tmp_path / "wal", signer)

    async def scenario() -> None:
        async for stub in serving(store, signer):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetInclusionProof(pb.GetInclusionProofRequest(request_id="dup"))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "2 entries carry request id 'dup' (seqs 0, 27)" in (info.value.details() or "")

            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetInclusionProof(pb.GetInclusionProofRequest(request_id="flood"))
            details = info.value.details() or ""
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"{FLOOD} entries" in details and f"and {FLOOD - 20} more)" in details
            assert len(details) < 300  # bounded, whatever the number of matches

            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetInclusionProof(pb.GetInclusionProofRequest(request_id=""))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            reply = await stub.GetInclusionProof(pb.GetInclusionProofRequest(request_id="pair"))
            assert (reply.index, reply.entry) == (9, entries[9])
            proof = TlogProof.from_text(reply.tlog_proof)
            assert verify_proof(proof, signer.verifier()).size == 30

    run(scenario, timeout=60)
