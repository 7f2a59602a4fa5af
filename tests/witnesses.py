"""What the witness tests share: a model log that signs checkpoints and writes
add-checkpoint bodies, and a real witness server on a loopback port."""

from __future__ import annotations

import base64
import hashlib
import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from extproc.core.checkpoint import Checkpoint, sign_checkpoint
from extproc.core.cosignature import Cosigner
from extproc.core.keyring import Keyring
from extproc.core.merkle import consistency_proof, leaf_hash, root_of
from extproc.core.note import Signer, signature_line
from extproc.core.witness import WitnessedLogs
from extproc.witness.server import Witness, WitnessHTTPServer, bind
from extproc.witness.state import WitnessState

ORIGIN = "audit.example/pod-a"


def fixed_signer(name: str, n: int) -> Signer:
    return Signer(name, Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


def fixed_cosigner(name: str, n: int) -> Cosigner:
    return Cosigner(name, Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


LOG_SIGNER = fixed_signer("audit.example", 40)


@dataclass
class ModelLog:
    """Leaves 'e0', 'e1', ... (or a fork's, with `tag`), signed by `signer`."""

    origin: str = ORIGIN
    signer: Signer = LOG_SIGNER
    tag: str = "e"
    leaves: list[bytes] = field(default_factory=list)

    def grow(self, size: int) -> None:
        while len(self.leaves) < size:
            self.leaves.append(leaf_hash(f"{self.tag}{len(self.leaves)}".encode()))

    def checkpoint(self, size: int) -> Checkpoint:
        self.grow(size)
        root = root_of(self.leaves[:size]) if size else hashlib.sha256(b"").digest()
        return Checkpoint(self.origin, size, root)

    def note(self, size: int) -> bytes:
        return sign_checkpoint(self.checkpoint(size), self.signer)

    def body(self, old: int, size: int, *, proof: list[bytes] | None = None) -> bytes:
        """The add-checkpoint body from `old` to `size` (the honest proof by default)."""
        self.grow(size)
        if proof is None:
            proof = consistency_proof(self.leaves[:size], old) if 0 < old < size else []
        lines = [f"old {old}", *(base64.b64encode(h).decode() for h in proof)]
        return ("\n".join(lines) + "\n\n").encode() + self.note(size)


def witnessed(*origins: str, signer: Signer = LOG_SIGNER) -> WitnessedLogs:
    return WitnessedLogs((o, Keyring.of(signer.verifier())) for o in origins or (ORIGIN,))


@contextmanager
def running_witness(
    state_dir: Path,
    cosigner: Cosigner,
    logs: WitnessedLogs | None = None,
    *,
    max_connections: int = 16,
) -> Iterator[WitnessHTTPServer]:
    """A witness serving on 127.0.0.1 (a free port) in a thread; stopped on exit."""
    state = WitnessState(state_dir)
    server = bind(
        "127.0.0.1",
        0,
        Witness(logs or witnessed(), cosigner, state),
        max_connections=max_connections,
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        state.close()


class Forger:
    """Cosigns with a key of its own under a witness's name and key id: what someone
    without the witness's key can do (a forged cosignature)."""

    def __init__(self, victim: Cosigner, n: int) -> None:
        self.victim = victim
        self._own = fixed_cosigner(victim.name, n)

    def cosign(self, body: str, timestamp: int) -> str:
        raw = base64.b64decode(self._own.cosign(body, timestamp).split(" ")[2])
        return signature_line(self.victim.name, self.victim.key_id, raw[4:])


def post(url: str, body: bytes, path: str = "/add-checkpoint") -> tuple[int, str, str]:
    """POST to a witness at `url`: (status, content type, body)."""
    host_port = url.removeprefix("http://").split("/", 1)[0]
    conn = http.client.HTTPConnection(host_port, timeout=10)
    try:
        conn.request("POST", path, body)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        conn.close()
