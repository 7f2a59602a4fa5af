"""The attacks of scripts/attack.py on witnesses (docs/THREATS.md, "Witnesses"):
a split view offered to the witness, forged cosignatures planted in the store,
a witness down. They run in the witness world of attack_lab.py: a live serve
with a real witness server (w1) and a witness that is down (w2), quorum 1.
"""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Callable
from functools import partial

from attack_lab import DOWN_WITNESS, LIVE_WITNESS, RESUME_S, WITNESSES, Findings, Witnessed, attack

from extproc import processes
from extproc.core import layout
from extproc.core.cosignature import add_signatures
from extproc.core.note import parse_note
from extproc.core.witness import SIZE_CONTENT_TYPE
from extproc.keys import load_signer
from extproc.store import open_store
from tests.witnesses import Forger, ModelLog, post

METRIC = "extproc_audit_witness_requests_total"
INVALID = f"invalid cosignature by witness {LIVE_WITNESS.name}"


def _offer(w: Witnessed, fork: ModelLog, ahead: int) -> tuple[int, str]:
    """Offer the witness the fork at its latest size plus `ahead` (a consistency
    proof of the fork's own tree); (status, body) of the answer to the fork itself."""
    size = 0
    for _ in range(20):
        status, content_type, body = post(w.live.url, fork.body(size, size + ahead))
        if status != 409 or content_type != SIZE_CONTENT_TYPE:
            return status, body.strip()
        size = int(body)  # not its size (the honest log moved on): offer the fork there
    raise RuntimeError("the witness's size kept moving: the fork was never offered")


@attack(
    "witness-split-view",
    WITNESSES,
    "the log's key signs another tree for the log's origin and offers it to the live "
    "witness: at the witness's size (another root), and at a later size behind that "
    "tree's consistency proof",
    "test_witness_decision.py::test_fork_at_the_same_size_refused, "
    "test_fork_behind_a_consistency_proof_refused; "
    "test_witnessed_serve.py::test_split_view_refused_by_the_witness_and_counted",
    world="witness",
)
def witness_split_view(w: Witnessed, f: Findings) -> None:
    processes.wait_until(lambda: w.sizes("cosigned"), "a cosigned checkpoint", w.stack.server)
    fork = ModelLog(origin=w.origin, signer=load_signer(w.stack.key_path), tag="split")
    answers = [_offer(w, fork, 0), _offer(w, fork, 4)]
    f.check(
        [status for status, _ in answers] == [409, 422],
        f"the forks were answered {answers}, not 409 and 422",
    )
    kept = sum(1 for line in w.witness_log if line.startswith(("refused (409)", "refused (422)")))
    f.check(kept >= 2, f"the witness's log keeps {kept} of the 2 refusals")
    # The honest log goes on being cosigned past the size the forks were offered at.
    offered_at, started = max(w.sizes("cosigned")), time.monotonic()
    processes.wait_until(
        lambda: max(w.sizes("cosigned")) > offered_at, "the honest log cosigned again",
        w.stack.server, timeout=60,
    )  # fmt: skip
    f.within("honest log cosigned again in", time.monotonic() - started, RESUME_S, "s")
    conflicts = w.metric(METRIC, witness=LIVE_WITNESS.name, result="conflict")
    f.check(conflicts == 0, f"{conflicts:.0f} of the server's own checkpoints refused")
    refused = sum(1 for status, _ in answers if status in (409, 422))
    f.note(
        f"{refused} of 2 forks refused ({answers[0][0]}: {answers[0][1][:40]}; {answers[1][0]}), "
        f"kept in the witness's log; the server's own checkpoints refused {conflicts:.0f}"
    )


def _other_key(note: bytes, cosigned: bytes) -> bytes:
    """The checkpoint cosigned under w1's name and key id with another key."""
    text, _ = parse_note(note)
    return add_signatures(note, [Forger(LIVE_WITNESS, 73).cosign(text, int(time.time()))])


def _bit_flipped(note: bytes, cosigned: bytes) -> bytes:
    """w1's own cosignature with one bit of its signature flipped."""
    head, _, sig = cosigned.rstrip(b"\n").rpartition(b" ")
    raw = bytearray(base64.b64decode(sig))
    raw[-1] ^= 1
    return head + b" " + base64.b64encode(bytes(raw)) + b"\n"


FORGERIES: dict[str, Callable[[bytes, bytes], bytes]] = {
    "another key": _other_key,
    "a bit flipped": _bit_flipped,
}


@attack(
    "witness-forged-cosignature",
    WITNESSES,
    "whoever can write the bucket replaces the latest `cosigned/<size>` object: a "
    "cosignature under the live witness's name and key id made with another key, and "
    "the witness's own with a bit flipped; then `verify --witness --witness-quorum 1`",
    "test_cosignature.py::test_forged_cosignature_detected[*]; "
    "test_witnessed_verify.py::test_forged_cosignature_detected",
    world="witness",
)
def witness_forged_cosignature(w: Witnessed, f: Findings) -> None:
    f.afterwards(partial(_forgeries_detected, w, f))  # on the stopped server's store


def _forgeries_detected(w: Witnessed, f: Findings) -> None:
    honest = w.verify(w.stack.store_url)
    f.check(honest.status == 0, f"the honest log: verify exit {honest.status}, not 0")
    size = max(w.sizes("cosigned"))
    f.check(size == max(w.sizes("checkpoints")), "the latest checkpoint is not cosigned")
    detected = 0
    for name, forge in FORGERIES.items():
        copy = w.lab.dir("witness-forged") / name.replace(" ", "-")
        shutil.copytree(w.stack.store_url, copy)
        store = open_store(str(copy))
        note = store.get(layout.checkpoint_key(store.prefix, w.stack.log_id, size))
        key = layout.cosigned_key(store.prefix, w.stack.log_id, size)
        store.put_replace(key, forge(note, store.get(key)), None)
        child = w.verify(str(copy))
        found = child.status == 1 and INVALID in child.stdout + child.stderr
        detected += f.check(found, f"{name}: verify exit {child.status}, no `{INVALID}`")
    f.note(
        f"{detected} of {len(FORGERIES)} detected by verify --witness (exit 1, "
        f"`{INVALID}`); the honest store: exit {honest.status}"
    )


@attack(
    "witness-down",
    WITNESSES,
    "a witness down (nothing listens at its URL) for the whole run, to stall publication "
    "or keep the log unwitnessed",
    "test_witnessed_serve.py::test_one_witness_down_publication_goes_on_and_quorum_two_needs_both",
    world="witness",
)
def witness_down(w: Witnessed, f: Findings) -> None:
    window = 2.0 if w.lab.quick else 5.0
    known, cosigned_before = set(w.sizes("checkpoints")), max(w.sizes("cosigned"), default=0)
    started = last = time.monotonic()
    new, longest = 0, 0.0
    while (now := time.monotonic()) - started < window:
        sizes = set(w.sizes("checkpoints"))
        if sizes - known:
            new, longest, last = new + len(sizes - known), max(longest, now - last), now
            known |= sizes
        time.sleep(0.05)
    longest = max(longest, time.monotonic() - last)
    f.check(new >= 2, f"{new} checkpoints published in {window:.0f} s")
    f.within("longest wait for a checkpoint", longest, RESUME_S, "s")
    down = w.metric(METRIC, witness=DOWN_WITNESS.name, result="unreachable")
    f.check(down >= 1, "the down witness was never counted unreachable")
    cosigned = max(w.sizes("cosigned"), default=0)
    f.check(cosigned > cosigned_before, "the live witness cosigned nothing meanwhile")
    f.note(
        f"{new} checkpoints in {window:.0f} s with w2.example down ({down:.0f} requests "
        f"counted unreachable); w1.example cosigned up to size {cosigned}"
    )
