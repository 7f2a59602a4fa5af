"""Keyrings: several trusted keys, each scoped to log ids and a validity window."""

from __future__ import annotations

import pytest

from extproc.core.checkpoint import Checkpoint, make_extensions, open_signed_checkpoint
from extproc.core.keyring import Keyring, SignedBy, TrustedKey, parse_keyring_lines
from extproc.core.note import Signer, sign_note
from extproc.errors import ConfigError, VerificationError

OLD = Signer.generate("mesh-audit")
NEW = Signer.generate("mesh-audit-2027")
SHOP = Signer.generate("mesh-audit-shop")
T0 = 1_780_000_000_000  # ms, 2026-05-28
DAY = 86_400_000


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _checkpoint(signer: Signer, log_id: str, at_ms: int) -> bytes:
    cp = Checkpoint(f"extproc-audit/{log_id}", 3, b"\x07" * 32, make_extensions(at_ms, "ab"))
    return sign_note(cp.to_text(), signer).encode()


RING_TEXT = f"""
# the mesh's keys
{OLD.verifier().to_text()}  logs=extproc-audit-*  until={_iso(T0)}
{NEW.verifier().to_text()}  logs=extproc-audit-*  from={_iso(T0)}
{SHOP.verifier().to_text()} logs=shop.*           # one namespace, no window
"""


def test_keyring_text_round_trip() -> None:
    ring = Keyring.from_text(RING_TEXT)
    assert len(ring) == 3
    assert Keyring.from_text(ring.to_text()).to_text() == ring.to_text()
    shop = ring.get(SHOP.name, SHOP.key_id)
    assert shop is not None and shop.logs == ("shop.*",) and shop.not_after_ms is None


def test_checkpoint_names_the_key_that_signed_it() -> None:
    ring = Keyring.from_text(RING_TEXT)
    _, key = open_signed_checkpoint(_checkpoint(NEW, "extproc-audit-0", T0 + DAY), ring)
    assert key.label == f"{NEW.name}+{NEW.key_id.hex()}"


def test_key_of_another_namespace_does_not_cover_this_log() -> None:
    ring = Keyring.from_text(RING_TEXT)
    _, key = open_signed_checkpoint(_checkpoint(SHOP, "bank.web-1", T0), ring)
    assert key.covers("shop.web-1") and not key.covers("bank.web-1")


def _key(ring: Keyring, signer: Signer) -> TrustedKey:
    key = ring.get(signer.name, signer.key_id)
    assert key is not None
    return key


def test_retired_key_convicted_by_its_own_time_line() -> None:
    old = _key(Keyring.from_text(RING_TEXT), OLD)
    problem = old.window_problem(T0 + 1, [SignedBy(T0 - DAY, "the store's write time")])
    assert problem is not None and "after its end date" in problem
    new = _key(Keyring.from_text(RING_TEXT), NEW)
    assert "before its start" in (new.window_problem(T0 - 1) or "")


# A retired key's signature with its time line backdated, or left out: the
# signer's word is no evidence. Rows: (claimed time, outside times, vouched, trusted).
RETIRED_KEY_EVIDENCE = {
    "backdated time line, nothing else": (T0 - DAY, [], None, False),
    "no time line, nothing else": (None, [], None, False),
    "backdated, clock past the end": (T0 - DAY, [SignedBy(T0 + DAY, "clock")], None, False),
    "store wrote it after the end date": (None, [SignedBy(T0 + 1, "store")], None, False),
    "the clock before the end date": (None, [SignedBy(T0 - DAY, "clock")], None, True),
    "store wrote it before the end date": (
        None,
        [SignedBy(T0 + DAY, "clock"), SignedBy(T0 - DAY, "store")],
        None,
        True,
    ),
    "consistent with a trusted checkpoint": (None, [SignedBy(T0 + DAY, "clock")], "state", True),
}


@pytest.mark.parametrize(
    ("claimed", "outside", "vouched", "trusted"),
    RETIRED_KEY_EVIDENCE.values(),
    ids=RETIRED_KEY_EVIDENCE.keys(),
)
def test_backdated_or_untimed_signature_by_retired_key_needs_outside_evidence(
    claimed: int | None, outside: list[SignedBy], vouched: str | None, trusted: bool
) -> None:
    old = _key(Keyring.from_text(RING_TEXT), OLD)
    problem = old.window_problem(claimed, outside, vouched_by=vouched)
    assert (problem is None) == trusted, problem
    if problem is not None:
        assert "retired" in problem and "time line is no evidence" in problem


def test_outside_time_before_a_keys_start_convicts_it() -> None:
    new = _key(Keyring.from_text(RING_TEXT), NEW)
    problem = new.window_problem(T0 + DAY, [SignedBy(T0 - 1, "the store's write time")])
    assert problem is not None and "before its start" in problem
    assert "the store's write time says" in problem
    assert new.window_problem(T0 + DAY, [SignedBy(T0 + DAY, "clock")]) is None


def test_signature_by_an_untrusted_key_is_refused() -> None:
    intruder = Signer.generate("mesh-audit")  # same name, other key
    with pytest.raises(VerificationError, match="no signature by a trusted key"):
        Keyring.from_text(RING_TEXT).verify_note(_checkpoint(intruder, "extproc-audit-0", T0))


def test_bad_signature_claiming_a_trusted_key_is_an_error() -> None:
    note = _checkpoint(OLD, "extproc-audit-0", T0).replace(b"extproc-audit-0", b"extproc-audit-1")
    with pytest.raises(VerificationError, match="invalid signature"):
        Keyring.from_text(RING_TEXT).verify_note(note)


BAD_LINES = {
    "not a key": ("garbage logs=*", "line 1"),
    "unknown option": (f"{OLD.verifier().to_text()} scope=all", "unknown option"),
    "bad time": (f"{OLD.verifier().to_text()} until=tomorrow", "not RFC 3339"),
    "no zone": (f"{OLD.verifier().to_text()} from=2026-01-01T00:00:00", "no time zone"),
    "until before from": (
        f"{OLD.verifier().to_text()} from=2026-02-01 until=2026-01-01",
        "until must be after from",
    ),
    "option without value": (f"{OLD.verifier().to_text()} logs=", "NAME=VALUE"),
}


@pytest.mark.parametrize(("text", "message"), BAD_LINES.values(), ids=BAD_LINES.keys())
def test_bad_keyring_line_is_a_usage_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_keyring_lines(text, "ring")


def test_a_key_listed_twice_is_refused() -> None:
    line = OLD.verifier().to_text()
    with pytest.raises(ConfigError, match="listed twice"):
        Keyring.from_text(f"{line}\n{line} logs=x\n")


def test_empty_keyring_is_refused() -> None:
    with pytest.raises(ConfigError, match="no verifier key"):
        Keyring.from_text("# nothing\n")


def test_plain_vkey_trusts_every_log_at_any_time() -> None:
    key = TrustedKey(OLD.verifier())
    assert key.covers("anything")
    assert key.window_problem(None) is None
    assert key.window_problem(10**15, [SignedBy(0, "clock")]) is None


def test_hash_inside_a_key_name_is_not_a_comment() -> None:
    """Key names may hold '#' (c2sp.org/signed-note): only a word starting with
    '#' starts a comment. Found by the round-trip fuzzer."""
    odd = Signer.generate("audit#2")
    ring = Keyring.from_text(
        f"{odd.verifier().to_text()} logs=a #shop only\n# {OLD.verifier().to_text()}\n"
    )
    assert [k.label for k in ring] == [f"audit#2+{odd.key_id.hex()}"]
    assert ring.get(odd.name, odd.key_id) == TrustedKey(odd.verifier(), ("a",))
