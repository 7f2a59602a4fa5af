"""C2SP signed notes with Ed25519 keys (c2sp.org/signed-note, golang.org/x/mod/sumdb/note).

Signatures and key ids are checked independently of extproc.core.note (raw
`cryptography` Ed25519 and hashlib), against the Go reference implementation's
known answers (tests/vectors/signed_note_go.json), and against a table of
forgeries and malformed inputs that must all be rejected.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.core.note import (
    Signer,
    Verifier,
    key_id,
    parse_note,
    sign_note,
    verify_note,
)
from extproc.errors import ConfigError, VerificationError

EM_DASH = "\u2014"  # c2sp.org/signed-note: every signature line starts with "— "
TEXT = "example.com/log\n42\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"


def seed(n: int) -> bytes:
    return bytes([n]) * 32


def make_signer(name: str, n: int) -> Signer:
    """A signer with a fixed seed, so failures reproduce."""
    return Signer(name, Ed25519PrivateKey.from_private_bytes(seed(n)))


def raw_public_key(n: int) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed(n)).public_key().public_bytes_raw()


def independent_key_id(name: str, public_key: bytes) -> bytes:
    """c2sp.org/signed-note: SHA-256(key name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\x0a" + b"\x01" + public_key).digest()[:4]


@dataclass(frozen=True)
class SignatureLine:
    name: str
    key_id: bytes
    signature: bytes


def split_note(note: str) -> tuple[str, list[SignatureLine]]:
    """Split a signed note by hand: text, blank line, `— <name> <base64>` lines."""
    text, sep, block = note.rpartition("\n\n")
    assert sep and block.endswith("\n")
    lines = []
    for line in block[:-1].split("\n"):
        prefix, name, b64 = line.split(" ")
        assert prefix == EM_DASH
        raw = base64.b64decode(b64, validate=True)
        lines.append(SignatureLine(name, raw[:4], raw[4:]))
    return text + "\n", lines


def signature_line(name: str, kid: bytes, signature: bytes) -> str:
    return f"{EM_DASH} {name} {base64.b64encode(kid + signature).decode()}\n"


ALICE = make_signer("audit.example/alice", 1)
ALICE_TWIN = make_signer("audit.example/alice", 2)  # same name, other key
BOB = make_signer("audit.example/bob", 3)


# --- Independent checks of what the module produces ------------------------------


def test_key_id_is_sha256_of_name_newline_type_and_public_key() -> None:
    public = raw_public_key(1)
    want = independent_key_id("audit.example/alice", public)
    assert key_id("audit.example/alice", public) == want
    assert ALICE.key_id == ALICE.verifier().key_id == want
    assert ALICE_TWIN.key_id != want


def test_verifier_key_string_format() -> None:
    vkey = ALICE.verifier().to_text()
    name, hex_id, b64 = vkey.split("+", 2)
    assert re.fullmatch(r"[0-9a-f]{8}", hex_id)
    assert (name, bytes.fromhex(hex_id)) == ("audit.example/alice", ALICE.key_id)
    raw = base64.b64decode(b64, validate=True)
    assert raw == b"\x01" + raw_public_key(1)
    assert base64.b64encode(raw).decode() == b64  # canonical, padded standard base64


def test_signer_key_string_format() -> None:
    skey = ALICE.to_text()
    assert skey.startswith("PRIVATE+KEY+audit.example/alice+")
    name, hex_id, b64 = skey.removeprefix("PRIVATE+KEY+").split("+", 2)
    assert (name, hex_id) == ("audit.example/alice", ALICE.key_id.hex())
    assert base64.b64decode(b64, validate=True) == b"\x01" + seed(1)


@pytest.mark.parametrize(
    "text",
    [
        TEXT,
        "one line\n",
        "\n",
        "several\nlines of\ntext\n",
        "unicode: \u00fcn\u00efc\u00f8d\u00e9 \u2014 \u2713 \U0001f512\n",
        "x" * 10_000 + "\n",
    ],
    ids=["checkpoint", "one-line", "empty-line", "multi-line", "unicode", "long"],
)
def test_signed_note_round_trip(text: str) -> None:
    note = sign_note(text, ALICE)
    assert verify_note(note, ALICE.verifier()) == text
    assert verify_note(note.encode(), ALICE.verifier()) == text
    assert parse_note(note)[0] == text


def test_signed_note_verifies_with_plain_ed25519() -> None:
    note = sign_note(TEXT, ALICE)
    assert note.startswith(TEXT + "\n" + EM_DASH + " audit.example/alice ")
    text, lines = split_note(note)
    assert text == TEXT
    assert len(lines) == 1
    line = lines[0]
    assert line.name == "audit.example/alice"
    assert line.key_id == independent_key_id(line.name, raw_public_key(1))
    assert len(line.signature) == 64
    # Raises InvalidSignature if the signature is not over exactly the text bytes.
    Ed25519PublicKey.from_public_bytes(raw_public_key(1)).verify(line.signature, TEXT.encode())


# --- Key string round trips ----------------------------------------------------------


def test_signer_text_round_trip() -> None:
    again = Signer.from_text(ALICE.to_text())
    assert again.to_text() == ALICE.to_text()
    assert (again.name, again.key_id) == (ALICE.name, ALICE.key_id)
    assert again.sign(b"msg") == ALICE.sign(b"msg")  # Ed25519 is deterministic


def test_verifier_text_round_trip() -> None:
    vkey = ALICE.verifier().to_text()
    again = Verifier.from_text(vkey)
    assert again.to_text() == vkey
    assert (again.name, again.key_id) == (ALICE.name, ALICE.key_id)
    assert verify_note(sign_note(TEXT, ALICE), again) == TEXT
    # Key files end with a newline.
    assert Verifier.from_text(vkey + "\n").to_text() == vkey


key_names = st.text(
    alphabet=st.characters(categories=["L", "N", "P", "S"], exclude_characters="+"),
    min_size=1,
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(name=key_names, key_seed=st.binary(min_size=32, max_size=32))
def test_key_strings_round_trip_for_any_key(name: str, key_seed: bytes) -> None:
    """Standard base64 contains '+', the key string separator: every key must survive."""
    signer = Signer(name, Ed25519PrivateKey.from_private_bytes(key_seed))
    skey, vkey = signer.to_text(), signer.verifier().to_text()
    assert Signer.from_text(skey).to_text() == skey
    verifier = Verifier.from_text(vkey)
    assert verifier.to_text() == vkey
    assert verifier.key_id == independent_key_id(
        name, signer.verifier().public_key.public_bytes_raw()
    )
    assert verify_note(sign_note(TEXT, signer), verifier) == TEXT


note_lines = st.text(
    alphabet=st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=30
)


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(note_lines, min_size=1, max_size=8))
def test_any_note_text_round_trips(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    note = sign_note(text, ALICE)
    assert verify_note(note, ALICE.verifier()) == text
    assert verify_note(note.encode(), ALICE.verifier()) == text
    with pytest.raises(VerificationError):
        verify_note(note, ALICE_TWIN.verifier())


def test_signer_repr_never_contains_key_material() -> None:
    skey = ALICE.to_text()
    secret_b64 = skey.rsplit("+", 1)[-1]
    secrets = [skey, secret_b64, seed(1).hex(), base64.b64encode(seed(1)).decode(), str(seed(1))]
    for shown in (repr(ALICE), str(ALICE), f"{ALICE}", f"{ALICE!r}", repr([ALICE])):
        assert "audit.example/alice" in shown
        assert ALICE.key_id.hex() in shown
        for secret in secrets:
            assert secret not in shown


# --- Go reference implementation known answers -----------------------------------------

GO_VECTORS = Path(__file__).parents[1] / "vectors" / "signed_note_go.json"


@dataclass(frozen=True)
class GoKey:
    verifier_key: str
    signer_key: str | None
    signature_line: str


@dataclass(frozen=True)
class GoNoteVectors:
    text: str
    keys: dict[str, GoKey]
    bad_verifier_keys: dict[str, str]


def load_go_vectors(path: Path = GO_VECTORS) -> GoNoteVectors:
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["source"]["repository"], "vectors must name their source"
    keys = {
        name: GoKey(k["verifier_key"], k.get("signer_key"), k["signature_line"])
        for name, k in raw["keys"].items()
    }
    return GoNoteVectors(raw["text"], keys, raw["bad_verifier_keys"])


GO = load_go_vectors()
PETER, ENOCH = GO.keys["PeterNeumann"], GO.keys["EnochRoot"]


def test_go_verifier_key_parses() -> None:
    v = Verifier.from_text(PETER.verifier_key)
    assert (v.name, v.key_id.hex()) == ("PeterNeumann", "c74f20a3")
    assert v.to_text() == PETER.verifier_key


def test_go_signer_key_reproduces_go_signed_note() -> None:
    # The Go example key's base64 contains '+'.
    signer = Signer.from_text(PETER.signer_key or "")
    assert signer.to_text() == PETER.signer_key
    assert signer.verifier().to_text() == PETER.verifier_key
    assert sign_note(GO.text, signer) == GO.text + "\n" + PETER.signature_line


@pytest.mark.parametrize(
    ("lines", "verifier_key"),
    [
        pytest.param([PETER], PETER.verifier_key, id="peter"),
        pytest.param([PETER, ENOCH], PETER.verifier_key, id="peter-ignores-enoch"),
        pytest.param([PETER, ENOCH], ENOCH.verifier_key, id="enoch-ignores-peter"),
        pytest.param([ENOCH, PETER], PETER.verifier_key, id="peter-second"),
        pytest.param([PETER, PETER, ENOCH, ENOCH], PETER.verifier_key, id="repeated"),
    ],
)
def test_go_signed_note_verifies(lines: list[GoKey], verifier_key: str) -> None:
    note = GO.text + "\n" + "".join(k.signature_line for k in lines)
    assert verify_note(note, Verifier.from_text(verifier_key)) == GO.text


def _go_bad_messages() -> list[object]:
    """TestOpen's badMsgs table, its invalid-signature case and an unknown-key-only note."""
    text, sig = GO.text, PETER.signature_line
    return [
        pytest.param(text.encode(), id="text-only"),
        pytest.param((text + "\n").encode(), id="no-signature-lines"),
        pytest.param((text + "\n" + sig[:-1]).encode(), id="no-final-newline"),
        pytest.param(("\x01" + text + "\n" + sig).encode(), id="control-character"),
        pytest.param(b"\xff" + (text + "\n" + sig).encode(), id="invalid-utf8"),
        pytest.param(
            (text + "\n" + sig.replace("PeterNeumann", "Bad Name")[:-1]).encode(),
            id="name-with-space",
        ),
        pytest.param((text + "\n" + sig + "Unexpected line.\n").encode(), id="unexpected-line"),
        pytest.param((text + "\n" + sig[:60] + "ABCD" + sig[60:]).encode(), id="bad-signature"),
        pytest.param((text + "\n" + ENOCH.signature_line).encode(), id="only-unknown-key"),
    ]


@pytest.mark.parametrize("note", _go_bad_messages())
def test_go_bad_messages_rejected(note: bytes) -> None:
    with pytest.raises(VerificationError):
        verify_note(note, Verifier.from_text(PETER.verifier_key))


@pytest.mark.parametrize("vkey", GO.bad_verifier_keys.values(), ids=GO.bad_verifier_keys.keys())
def test_go_bad_verifier_keys_rejected(vkey: str) -> None:
    with pytest.raises(ConfigError):
        Verifier.from_text(vkey)


@pytest.mark.parametrize("which", ["verifier", "signer"])
def test_go_mangled_keys_rejected(which: str) -> None:
    """TestNewVerifier/TestNewSigner: every proper substring and every byte+1 fails."""
    key = PETER.verifier_key if which == "verifier" else PETER.signer_key or ""
    parse: Callable[[str], object] = Verifier.from_text if which == "verifier" else Signer.from_text
    mangled = [key[i:j] for i in range(len(key) + 1) for j in range(i + 1, len(key) + 1)]
    mangled.remove(key)
    mangled += [key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :] for i in range(len(key))]
    accepted = []
    for bad in mangled:
        try:
            parse(bad)
        except ConfigError:
            continue
        accepted.append(bad)
    assert accepted == []


# --- Forgeries and malformed notes -------------------------------------------------------


def _replace_char(text: str, pos: int) -> str:
    new = "Y" if text[pos] == "X" else "X"
    return text[:pos] + new + text[pos + 1 :]


def _alter_body(note: str, pos: int) -> str:
    text, sep, block = note.rpartition("\n\n")
    return _replace_char(text, pos) + sep + block


def _alter_signature(note: str, byte: int) -> str:
    (line,) = split_note(note)[1]
    raw = bytearray(line.key_id + line.signature)
    raw[byte] ^= 0x01
    return TEXT + "\n" + signature_line(line.name, bytes(raw[:4]), bytes(raw[4:]))


def _truncate_signature(note: str, keep: int) -> str:
    (line,) = split_note(note)[1]
    raw = (line.key_id + line.signature)[:keep]
    return TEXT + "\n" + f"{EM_DASH} {line.name} {base64.b64encode(raw).decode()}\n"


Forgery = Callable[[str], str | bytes]

FORGERIES: list[object] = [
    pytest.param(lambda n: sign_note(TEXT, ALICE_TWIN), id="wrong-key-same-name"),
    pytest.param(lambda n: sign_note(TEXT, BOB), id="unknown-key-only"),
    pytest.param(
        lambda n: TEXT + "\n" + signature_line(ALICE.name, ALICE.key_id, ALICE_TWIN.sign(b"x")),
        id="claims-our-key-id-signed-by-other-key",
    ),
    pytest.param(
        lambda n: n + signature_line(ALICE.name, ALICE.key_id, bytes(64)),
        id="valid-plus-forged-signature-claiming-our-key",
    ),
    *[
        pytest.param(lambda n, p=p: _alter_body(n, p), id=f"altered-body-char{p}")
        for p in (0, 1, 15, 16, 30, len(TEXT) - 2)
    ],
    pytest.param(lambda n: n.replace("\n42\n", "\n43\n", 1), id="altered-tree-size"),
    pytest.param(lambda n: n.replace(TEXT, TEXT + "extra\n", 1), id="appended-body-line"),
    pytest.param(lambda n: n.replace(TEXT, TEXT[:-1] + " \n", 1), id="trailing-space-in-body"),
    *[
        pytest.param(lambda n, b=b: _alter_signature(n, b), id=f"altered-signature-byte{b}")
        for b in (0, 3, 4, 35, 67)
    ],
    pytest.param(lambda n: _truncate_signature(n, 67), id="truncated-signature-67"),
    pytest.param(lambda n: _truncate_signature(n, 36), id="truncated-signature-36"),
    pytest.param(lambda n: _truncate_signature(n, 5), id="truncated-signature-5"),
    pytest.param(lambda n: _truncate_signature(n, 4), id="key-id-only"),
    pytest.param(lambda n: TEXT, id="missing-signature-block"),
    pytest.param(lambda n: TEXT + "\n", id="blank-line-no-signatures"),
    pytest.param(lambda n: n[:-1], id="no-final-newline"),
    pytest.param(lambda n: n.replace(f"{EM_DASH} ", "- ", 1), id="hyphen-not-em-dash"),
    pytest.param(lambda n: n.replace(f"{EM_DASH} ", EM_DASH, 1), id="no-space-after-dash"),
    pytest.param(lambda n: n.replace(f"{ALICE.name} ", f"{ALICE.name}  ", 1), id="double-space"),
    pytest.param(lambda n: n.replace(f" {ALICE.name} ", " ", 1), id="missing-key-name"),
    pytest.param(lambda n: n.replace(f"{ALICE.name} ", "audit.example/mallory ", 1), id="renamed"),
    pytest.param(lambda n: n[:-3] + "!=\n", id="signature-not-base64"),
    pytest.param(lambda n: n.replace("\n\n", "\n\n\n", 1), id="two-blank-lines"),
    pytest.param(lambda n: "\n" + n, id="leading-blank-line"),
    pytest.param(lambda n: n.replace("\n42\n", "\n42\r\n", 1), id="carriage-return"),
    pytest.param(lambda n: n.encode() + b"\xff", id="invalid-utf8"),
    pytest.param(lambda n: n.encode() + b" " * (1 << 20), id="oversized"),
]


@pytest.mark.parametrize("forge", FORGERIES)
def test_forged_or_malformed_note_rejected(forge: Forgery) -> None:
    note = sign_note(TEXT, ALICE)
    verify_note(note, ALICE.verifier())  # the untampered note is fine
    with pytest.raises(VerificationError):
        verify_note(forge(note), ALICE.verifier())


@pytest.mark.parametrize(
    "others",
    [[BOB], [ALICE_TWIN], [BOB, ALICE_TWIN]],
    ids=["unknown-name", "same-name-other-key", "both"],
)
def test_unknown_extra_signatures_ignored(others: list[Signer]) -> None:
    ours = sign_note(TEXT, ALICE).removeprefix(TEXT + "\n")
    theirs = [sign_note(TEXT, s).removeprefix(TEXT + "\n") for s in others]
    for block in (ours + "".join(theirs), "".join(theirs) + ours):
        assert verify_note(TEXT + "\n" + block, ALICE.verifier()) == TEXT


def test_signature_over_other_text_rejected() -> None:
    """A valid signature moved onto another note body (splicing attack)."""
    other = "example.com/log\n43\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    block = sign_note(other, ALICE).removeprefix(other + "\n")
    with pytest.raises(VerificationError, match="invalid signature"):
        verify_note(TEXT + "\n" + block, ALICE.verifier())


@pytest.mark.parametrize(
    "text",
    ["no newline", "blank\n\nline\n", "tab\there\n", "nul\x00\n", "cr\r\n", ""],
    ids=["no-final-newline", "blank-line", "tab", "nul", "carriage-return", "empty"],
)
def test_sign_note_refuses_malformed_text(text: str) -> None:
    with pytest.raises(ConfigError, match="note text"):
        sign_note(text, ALICE)


# --- Malformed key strings -----------------------------------------------------------------


def _vkey(name: str, kid: bytes, key: bytes) -> str:
    return f"{name}+{kid.hex()}+{base64.b64encode(key).decode()}"


_PUB = raw_public_key(1)
_NAME = "audit.example/alice"
_GOOD_VKEY = _vkey(_NAME, independent_key_id(_NAME, _PUB), b"\x01" + _PUB)

BAD_VERIFIER_KEYS = [
    pytest.param("", id="empty"),
    pytest.param(_NAME, id="one-part"),
    pytest.param(_GOOD_VKEY.rsplit("+", 1)[0], id="two-parts"),
    pytest.param(_GOOD_VKEY.replace("+", "-", 1), id="two-parts-dash"),
    pytest.param(_GOOD_VKEY[: _GOOD_VKEY.rindex("+") + 1] + "!!!!" * 11, id="bad-base64"),
    pytest.param(_GOOD_VKEY[:-1], id="bad-base64-length"),
    pytest.param(_GOOD_VKEY + "+extra", id="extra-part"),
    pytest.param(_vkey(_NAME, b"\x00\x00\x00\x00", b"\x01" + _PUB), id="wrong-key-id"),
    pytest.param(
        _vkey(_NAME, independent_key_id("audit.example/bob", _PUB), b"\x01" + _PUB),
        id="key-id-of-other-name",
    ),
    pytest.param(_vkey(_NAME, ALICE_TWIN.key_id, b"\x01" + _PUB), id="key-id-of-other-key"),
    pytest.param(f"{_NAME}+zzzzzzzz+{_GOOD_VKEY.split('+', 2)[2]}", id="key-id-not-hex"),
    pytest.param(
        f"{_NAME}+{ALICE.key_id.hex()[:6]}+{_GOOD_VKEY.split('+', 2)[2]}", id="short-key-id"
    ),
    pytest.param(
        _vkey(
            _NAME, hashlib.sha256(_NAME.encode() + b"\n\x02" + _PUB).digest()[:4], b"\x02" + _PUB
        ),
        id="wrong-algorithm-byte",
    ),
    pytest.param(
        _vkey(_NAME, hashlib.sha256(_NAME.encode() + b"\n" + _PUB).digest()[:4], _PUB),
        id="missing-algorithm-byte",
    ),
    pytest.param(
        _vkey(_NAME, independent_key_id(_NAME, _PUB[:31]), b"\x01" + _PUB[:31]),
        id="short-public-key",
    ),
    pytest.param("+" + _GOOD_VKEY.split("+", 1)[1], id="empty-name"),
    pytest.param(
        _vkey("bad name", independent_key_id("bad name", _PUB), b"\x01" + _PUB),
        id="name-with-space",
    ),
    pytest.param("PRIVATE+KEY+" + _GOOD_VKEY, id="signer-key-given"),
]


def test_bad_verifier_key_table_starts_from_a_good_key() -> None:
    assert Verifier.from_text(_GOOD_VKEY).to_text() == _GOOD_VKEY == ALICE.verifier().to_text()


@pytest.mark.parametrize("vkey", BAD_VERIFIER_KEYS)
def test_malformed_verifier_key_rejected(vkey: str) -> None:
    with pytest.raises(ConfigError):
        Verifier.from_text(vkey)


_SKEY = ALICE.to_text()
_SKEY_B64 = _SKEY.split("+", 4)[4]

BAD_SIGNER_KEYS = [
    pytest.param("", id="empty"),
    pytest.param(_SKEY.removeprefix("PRIVATE+KEY+"), id="verifier-shaped"),
    pytest.param(_SKEY.replace("PRIVATE", "private", 1), id="lower-case-prefix"),
    pytest.param(f"PRIVATE+KEY+{_NAME}+00000000+{_SKEY_B64}", id="wrong-key-id"),
    pytest.param(f"PRIVATE+KEY+{_NAME}+{ALICE.key_id.hex()}+{'!' * 44}", id="bad-base64"),
    pytest.param(
        f"PRIVATE+KEY+{_NAME}+{ALICE.key_id.hex()}+" + base64.b64encode(b"\x02" + seed(1)).decode(),
        id="wrong-algorithm-byte",
    ),
    pytest.param(
        f"PRIVATE+KEY+{_NAME}+{ALICE.key_id.hex()}+" + base64.b64encode(seed(1)).decode(),
        id="missing-algorithm-byte",
    ),
    pytest.param(f"PRIVATE+KEY+{_NAME}+{ALICE.key_id.hex()}", id="missing-key"),
    pytest.param(f"PRIVATE+KEY+bad name+{ALICE.key_id.hex()}+{_SKEY_B64}", id="name-with-space"),
]


@pytest.mark.parametrize("skey", BAD_SIGNER_KEYS)
def test_malformed_signer_key_rejected(skey: str) -> None:
    with pytest.raises(ConfigError):
        Signer.from_text(skey)


@pytest.mark.parametrize("name", ["", "a+b", "a b", "tab\there", "new\nline", "nul\x00"], ids=repr)
def test_invalid_key_name_rejected(name: str) -> None:
    with pytest.raises(ConfigError):
        Signer(name, Ed25519PrivateKey.from_private_bytes(seed(1)))
