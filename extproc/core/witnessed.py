"""What verify checks of a log's witness cosignatures (`verify --witness`): pure.

The writer publishes each checkpoint twice: `checkpoints/<size>` as signed,
and, once witnesses answered, `cosigned/<size>`: the same note with their
cosignature lines (docs/FORMAT.md, "Witnesses"). With a witness policy
(k of n witness keys) the auditor requires:

- the log's latest checkpoint cosigned by a quorum: else a split view (a
  tree shown to this auditor only) cannot be told from the honest log;
- no cosignature that names a trusted witness key and fails (a forgery);
- a checkpoint signed by a key past its end date counts only if a quorum
  cosigned it by that date (the k-th earliest cosignature time: time from
  outside the signer that k-1 witnesses cannot move; keyring.SignedBy).

Checkpoints below the latest need no cosignature of their own: the entries
show each is a prefix of the latest, which the witnesses checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from extproc.core.checkpoint import Checkpoint
from extproc.core.cosignature import Cosignature, WitnessPolicy
from extproc.core.keyring import Keyring, SignedBy, TrustedKey
from extproc.core.note import parse_note
from extproc.errors import VerificationError


@dataclass(frozen=True)
class Cosigned:
    """One `cosigned/<size>` object that verifies: its text and valid cosignatures."""

    key: str
    text: str
    cosignatures: list[Cosignature]


@dataclass
class WitnessedLog:
    """Cosigned objects of one log, by tree size, as verify reads them."""

    policy: WitnessPolicy | None  # None: cosigned objects are only checked to be the log's
    cosigned: dict[int, Cosigned] = field(default_factory=dict)

    def add(self, key: str, size: int, data: bytes, keyring: Keyring) -> tuple[str, bool]:
        """Read one cosigned object. Returns ("", _) if it is kept, else (why, forged):
        forged is True for a forged cosignature on a note the log's key signed
        (an error), False for an object that is not the log's (foreign)."""
        try:
            text, _ = keyring.verify_note(data)
            checkpoint = Checkpoint.from_text(text)
        except VerificationError as e:
            return f"cosigned checkpoint does not verify: {e}", False
        if checkpoint.size != size:
            return f"cosigned checkpoint says tree size {checkpoint.size}, its name {size}", True
        if self.policy is None:
            return "", False
        try:
            _, signatures = parse_note(data)
            found = self.policy.cosignatures(text, signatures)
        except VerificationError as e:
            return f"cosigned checkpoint: {e}", True
        self.cosigned[size] = Cosigned(key, text, found)
        return "", False

    def evidence(self, checkpoint: Checkpoint) -> SignedBy | None:
        """When a quorum had cosigned `checkpoint` (None: no quorum did)."""
        got = self.cosigned.get(checkpoint.size)
        if self.policy is None or got is None or got.text != checkpoint.to_text():
            return None
        return self.policy.quorum_evidence(got.cosignatures)

    def in_window(self, checkpoint: Checkpoint, signer: TrustedKey) -> bool:
        """Did a quorum cosign `checkpoint` by its key's end date?"""
        quorum = self.evidence(checkpoint)
        return quorum is not None and signer.cosigned_after_end(quorum) is None

    def problems(
        self, latest: Checkpoint | None, checkpoints: dict[int, tuple[str, Checkpoint, TrustedKey]]
    ) -> list[tuple[str, str]]:
        """(object key, message) of each error: a cosigned object whose text is not
        the checkpoint of its size, the latest checkpoint without a quorum, a
        retired key's checkpoint cosigned only after its end. `checkpoints`: the
        log's, by tree size: (object key, checkpoint, the trusted key that signed it)."""
        if self.policy is None:
            return []
        found: list[tuple[str, str]] = []
        for size, got in sorted(self.cosigned.items()):
            mine = checkpoints.get(size)
            if mine is not None and mine[1].to_text() != got.text:
                found.append((got.key, f"cosigned checkpoint is not the checkpoint of size {size}"))
        if latest is not None and self.evidence(latest) is None:
            on_latest = self.cosigned.get(latest.size)
            have = (
                on_latest.cosignatures
                if on_latest is not None and on_latest.text == latest.to_text()
                else []
            )
            witnessed = [s for s, (_, cp, _) in checkpoints.items() if self.evidence(cp)]
            below = f"; the largest cosigned by a quorum is {max(witnessed)}" if witnessed else ""
            key = checkpoints[latest.size][0] if latest.size in checkpoints else ""
            found.append(
                (
                    key,
                    f"latest checkpoint (tree size {latest.size}) is "
                    f"{self.policy.shortfall(have)}{below}: a view shown to this auditor "
                    "alone cannot be ruled out",
                )
            )
        for _, (key, checkpoint, signer) in sorted(checkpoints.items()):
            quorum = self.evidence(checkpoint)
            if quorum is not None and (problem := signer.cosigned_after_end(quorum)):
                found.append((key, f"checkpoint {problem}"))
        return found
