"""What a witness answers (c2sp.org/tlog-witness add-checkpoint), decided in core/witness.py,
and its record of each log (extproc/witness/state.py).

Each refusal the spec names is held by a row: an unknown origin, a checkpoint
not signed by the log's key, a stale old size, a fork at the same size, an
inconsistent proof, malformed bodies. A witness cosigns only a tree that
extends the last one it cosigned; fuzzed bodies get an answer, never an
exception.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.core.cosignature import WitnessPolicy
from extproc.core.witness import MAX_BODY_BYTES, Latest, WitnessedLogs, add_checkpoint
from extproc.errors import ConfigError, StorageError
from extproc.witness.state import WitnessState
from tests.budget import FUZZ, KIB, within_budget
from tests.witnesses import ORIGIN, ModelLog, fixed_cosigner, fixed_signer, witnessed

WITNESS = fixed_cosigner("witness.example/w1", 50)
NOW = 1_800_000_000


class Records:
    """The witness's records in memory (the server keeps them in WitnessState)."""

    def __init__(self) -> None:
        self.latest: dict[str, Latest] = {}

    def send(self, body: bytes, logs: WitnessedLogs | None = None) -> tuple[int, str, str]:
        answer = add_checkpoint(body, logs or witnessed(), self.latest.get, WITNESS, NOW)
        if answer.latest is not None:
            self.latest[answer.origin] = answer.latest
        return answer.status, answer.body, answer.content_type


def test_first_checkpoint_cosigned_then_each_extension() -> None:
    log, records = ModelLog(), Records()
    status, body, _ = records.send(log.body(0, 5))
    assert status == 200
    policy = WitnessPolicy.of([WITNESS.witness_key()])
    _, found = policy.check(log.note(5) + body.encode())
    assert [c.timestamp for c in found] == [NOW]
    for old, new in [(5, 8), (8, 8), (8, 13), (13, 64)]:
        status, body, _ = records.send(log.body(old, new))
        assert status == 200, body
    assert records.latest[ORIGIN].size == 64


def test_stale_old_size_answered_with_the_witness_size() -> None:
    log, records = ModelLog(), Records()
    records.send(log.body(0, 7))
    status, body, content_type = records.send(log.body(3, 9))
    assert (status, body, content_type) == (409, "7\n", "text/x.tlog.size")
    assert records.send(log.body(7, 9))[0] == 200  # the client retries from 7


def test_rollback_refused() -> None:
    log, records = ModelLog(), Records()
    records.send(log.body(0, 9))
    assert records.send(log.body(0, 4))[:2] == (409, "9\n")
    assert records.latest[ORIGIN].size == 9


def test_fork_at_the_same_size_refused() -> None:
    log, fork, records = ModelLog(), ModelLog(tag="x"), Records()
    records.send(log.body(0, 6))
    status, body, _ = records.send(fork.body(6, 6))
    assert status == 409 and "fork" in body
    assert records.latest[ORIGIN] == Latest(6, log.checkpoint(6).root_hash)  # unchanged


def test_fork_behind_a_consistency_proof_refused() -> None:
    log, records = ModelLog(), Records()
    records.send(log.body(0, 6))
    fork = ModelLog(tag="x")
    fork.leaves = log.leaves[:4]  # shares 4 leaves, then differs
    assert records.send(fork.body(6, 10))[0] == 422
    forged = fork.body(6, 10, proof=[bytes(32)] * 3)
    assert records.send(forged)[0] == 422
    assert records.latest[ORIGIN].size == 6


def test_proof_from_zero_must_be_empty() -> None:
    log = ModelLog()
    status, body, _ = Records().send(log.body(0, 5, proof=[bytes(32)]))
    assert status == 422 and "size 0" in body


def test_unknown_origin_is_404_and_bad_signature_403() -> None:
    records = Records()
    assert records.send(ModelLog(origin="other.example/x").body(0, 3))[0] == 404
    stranger = ModelLog(signer=fixed_signer("audit.example", 41))
    assert records.send(stranger.body(0, 3))[0] == 403
    assert ORIGIN not in records.latest


def test_origin_glob_covers_every_log_of_one_key() -> None:
    logs = witnessed("audit.example/*")
    records = Records()
    for log_id in ("pod-a", "pod-b"):
        log = ModelLog(origin=f"audit.example/{log_id}")
        assert records.send(log.body(0, 2), logs)[0] == 200
    assert records.send(ModelLog(origin="other.example/pod-a").body(0, 2), logs)[0] == 404


MALFORMED = [
    ("empty", b""),
    ("no_blank_line", b"old 0\n"),
    ("bad_old_line", b"old -1\n\n" + ModelLog().note(3)),
    ("leading_zero", b"old 03\n\n" + ModelLog().note(3)),
    ("old_beyond_size", ModelLog().body(0, 3).replace(b"old 0", b"old 5")),
    ("hash_not_base64", b"old 2\n!!!\n\n" + ModelLog().note(3)),
    ("hash_short", b"old 2\nAAAA\n\n" + ModelLog().note(3)),
    ("too_many_hashes", b"old 2\n" + (base64.b64encode(bytes(32)) + b"\n") * 64 + b"\n"),
    ("not_utf8", b"old 0\n\n\xff\xfe"),
    ("note_unsigned", b"old 0\n\n" + ModelLog().note(3).split(b"\n\n")[0] + b"\n"),
    ("too_large", b"old 0\n\n" + b"x" * MAX_BODY_BYTES),
]


@pytest.mark.parametrize("body", [b for _, b in MALFORMED], ids=[n for n, _ in MALFORMED])
def test_malformed_request_refused(body: bytes) -> None:
    status, _, _ = Records().send(body)
    assert status == 400


def test_origin_listed_twice_refused() -> None:
    with pytest.raises(ConfigError, match="listed twice"):
        witnessed(ORIGIN, ORIGIN)


@FUZZ
@given(st.binary(max_size=4 * KIB))
def test_witness_answers_garbage_fuzz(raw: bytes) -> None:
    with within_budget(memory=512 * KIB, cpu=0.5, allowed=()):
        status, _, _ = Records().send(raw)
    assert status in (400, 403, 404, 409, 422)


@FUZZ
@given(st.integers(0, len(ModelLog().body(5, 9)) * 8 - 1))
def test_any_bit_flip_of_a_request_is_refused(bit: int) -> None:
    log, records = ModelLog(), Records()
    records.send(log.body(0, 5))
    body = bytearray(log.body(5, 9))
    body[bit // 8] ^= 1 << (bit % 8)
    with within_budget(memory=512 * KIB, cpu=0.5, allowed=()):
        status, _, _ = records.send(bytes(body))
    assert status != 200 and records.latest[ORIGIN].size == 5


# --- the record on disk ----------------------------------------------------------


def test_state_survives_a_restart(tmp_path: Path) -> None:
    state = WitnessState(tmp_path)
    state.put(ORIGIN, Latest(9, b"\x01" * 32))
    state.close()
    again = WitnessState(tmp_path)
    assert again.get(ORIGIN) == Latest(9, b"\x01" * 32)
    assert again.get("other.example/x") is None
    again.close()


def test_second_witness_on_one_state_refused(tmp_path: Path) -> None:
    state = WitnessState(tmp_path)
    with pytest.raises(ConfigError, match="in use"):
        WitnessState(tmp_path)
    state.close()


@pytest.mark.parametrize(
    "damage",
    [b"", b"{", b'{"origin": "other", "size": 1, "root": "AA=="}', b"x" * 5000,
     b'{"origin": "audit.example/pod-a", "size": -1, "root": ""}'],
)  # fmt: skip
def test_damaged_record_refused(tmp_path: Path, damage: bytes) -> None:
    state = WitnessState(tmp_path)
    state.put(ORIGIN, Latest(1, bytes(32)))
    state.close()
    (record,) = tmp_path.glob("*.json")
    record.write_bytes(damage)
    state = WitnessState(tmp_path)
    with pytest.raises(StorageError, match="damaged"):
        state.get(ORIGIN)
    state.close()


def test_state_bounds_the_logs_it_keeps(tmp_path: Path) -> None:
    state = WitnessState(tmp_path, max_logs=2)
    state.put("a/1", Latest(1, bytes(32)))
    state.put("a/2", Latest(1, bytes(32)))
    state.put("a/2", Latest(2, bytes(32)))  # an update is not a new log
    with pytest.raises(StorageError, match="its bound"):
        state.put("a/3", Latest(1, bytes(32)))
    state.close()


def test_damaged_record_answers_503_and_cosigns_nothing(tmp_path: Path) -> None:
    from extproc.witness.server import Witness

    log = ModelLog()
    state = WitnessState(tmp_path)
    witness = Witness(witnessed(), WITNESS, state, clock=lambda: NOW)
    assert witness.answer(log.body(0, 3)).status == 200
    state.close()
    (record,) = tmp_path.glob("*.json")
    record.write_bytes(b"{")
    state = WitnessState(tmp_path)
    witness = Witness(witnessed(), WITNESS, state, clock=lambda: NOW)
    answer = witness.answer(log.body(3, 5))
    assert answer.status == 503 and "\u2014" not in answer.body
    state.close()
