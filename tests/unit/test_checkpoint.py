"""C2SP tlog-checkpoint bodies (c2sp.org/tlog-checkpoint) and our extension lines.

    <origin>\\n<tree size>\\n<base64 root hash>\\n[extension lines]

The text format is pinned byte for byte, every serializer is round-trip
tested, and a malformed body is rejected even when its signature is valid.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc import cli
from extproc.config import ServeConfig
from extproc.core.checkpoint import (
    MAX_ORIGIN_CHARS,
    Checkpoint,
    make_extensions,
    open_checkpoint,
    sign_checkpoint,
)
from extproc.core.note import Signer, parse_note, sign_note
from extproc.errors import ConfigError, VerificationError
from tests.attacks import NEWLINE_ORIGIN_PREFIX as NEWLINE_ORIGIN

EMPTY_ROOT = hashlib.sha256(b"").digest()
EMPTY_ROOT_B64 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # base64(SHA-256(""))
ROOT = bytes(range(32))
ROOT_B64 = base64.b64encode(ROOT).decode()
UINT64_MAX = (1 << 64) - 1

SIGNER = Signer("audit.example/log", Ed25519PrivateKey.from_private_bytes(b"\x07" * 32))
OTHER = Signer("audit.example/log", Ed25519PrivateKey.from_private_bytes(b"\x08" * 32))

# The example in c2sp.org/tlog-checkpoint (C2SP/C2SP tlog-checkpoint.md, commit
# 2793893976c835db049c194d8f2c4f946dcb70ba); its verifier key is not published.
C2SP_EXAMPLE = (
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n"
    "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5"
    "/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
)


# --- Exact text format -------------------------------------------------------------


def test_empty_root_base64_constant() -> None:
    assert base64.b64encode(EMPTY_ROOT).decode() == EMPTY_ROOT_B64


@pytest.mark.parametrize(
    ("checkpoint", "text"),
    [
        pytest.param(
            Checkpoint("example.com/log", 0, EMPTY_ROOT),
            f"example.com/log\n0\n{EMPTY_ROOT_B64}\n",
            id="empty-tree",
        ),
        pytest.param(
            Checkpoint("example.com/log", 1000, ROOT),
            f"example.com/log\n1000\n{ROOT_B64}\n",
            id="no-extensions",
        ),
        pytest.param(
            Checkpoint("o", UINT64_MAX, ROOT),
            f"o\n18446744073709551615\n{ROOT_B64}\n",
            id="largest-size",
        ),
        pytest.param(
            Checkpoint("audit/e2e", 7, ROOT, make_extensions(1700000000123, "00ff", final=True)),
            f"audit/e2e\n7\n{ROOT_B64}\ntime 1700000000123\nwriter 00ff\nfinal\n",
            id="our-extensions",
        ),
        pytest.param(
            Checkpoint("o", 3, ROOT, ("opaque extension", "x")),
            f"o\n3\n{ROOT_B64}\nopaque extension\nx\n",
            id="opaque-extensions",
        ),
    ],
)
def test_checkpoint_text_format(checkpoint: Checkpoint, text: str) -> None:
    assert checkpoint.to_text() == text
    assert Checkpoint.from_text(text) == checkpoint


def test_c2sp_example_checkpoint_parses() -> None:
    body, signatures = parse_note(C2SP_EXAMPLE)
    cp = Checkpoint.from_text(body)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert cp.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.extensions == ()
    assert cp.to_text() == body
    assert [s.name for s in signatures] == ["example.com/behind-the-sofa"]


# --- Round trips ---------------------------------------------------------------------

one_line = st.text(alphabet=st.characters(exclude_characters="\n"), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(
    origin=one_line,
    size=st.integers(0, UINT64_MAX),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(one_line, max_size=5).map(tuple),
)
def test_checkpoint_text_round_trip(
    origin: str, size: int, root: bytes, extensions: tuple[str, ...]
) -> None:
    cp = Checkpoint(origin, size, root, extensions)
    text = cp.to_text()
    assert (
        text == "\n".join([origin, str(size), base64.b64encode(root).decode(), *extensions]) + "\n"
    )
    assert Checkpoint.from_text(text) == cp
    assert Checkpoint.from_text(text).to_text() == text


# Signed-note text may not hold control characters (c2sp.org/signed-note).
note_line = st.text(
    alphabet=st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=40
)
# What this writer signs as an origin: printable ASCII, no space, no '+'.
origins = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="+"),
    min_size=1,
    max_size=MAX_ORIGIN_CHARS,
)


@settings(max_examples=100, deadline=None)
@given(
    origin=origins,
    size=st.integers(0, UINT64_MAX),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(note_line, max_size=4).map(tuple),
)
def test_signed_checkpoint_round_trip(
    origin: str, size: int, root: bytes, extensions: tuple[str, ...]
) -> None:
    cp = Checkpoint(origin, size, root, extensions)
    signed = sign_checkpoint(cp, SIGNER)
    assert signed.startswith(cp.to_text().encode() + b"\n\xe2\x80\x94 audit.example/log ")
    assert open_checkpoint(signed, SIGNER.verifier()) == cp


@pytest.mark.parametrize(
    "extensions",
    [(), make_extensions(1, "a"), make_extensions(1700000000000, "0123abcd", final=True)],
    ids=["none", "time-writer", "final"],
)
def test_signed_checkpoint_opens(extensions: tuple[str, ...]) -> None:
    cp = Checkpoint("audit.example/log/prod", 12345, ROOT, extensions)
    assert open_checkpoint(sign_checkpoint(cp, SIGNER), SIGNER.verifier()) == cp


# --- Attacks on signed checkpoints -------------------------------------------------------


def _signed() -> bytes:
    return sign_checkpoint(Checkpoint("audit.example/log", 10, ROOT, ("time 5",)), SIGNER)


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(
            lambda: sign_checkpoint(Checkpoint("audit.example/log", 10, ROOT), OTHER),
            id="other-key",
        ),
        pytest.param(lambda: _signed().replace(b"\n10\n", b"\n11\n"), id="size-changed"),
        pytest.param(lambda: _signed().replace(b"\n10\n", b"\n010\n"), id="size-zero-padded"),
        pytest.param(
            lambda: _signed().replace(b"audit.example/log\n", b"audit.example/lug\n", 1),
            id="origin-changed",
        ),
        pytest.param(
            lambda: _signed().replace(ROOT_B64.encode(), base64.b64encode(bytes(32))),
            id="root-changed",
        ),
        pytest.param(lambda: _signed().replace(b"time 5\n", b""), id="extension-removed"),
        pytest.param(
            lambda: _signed().replace(b"time 5\n", b"time 5\nfinal\n"), id="extension-added"
        ),
        pytest.param(lambda: _signed().split(b"\n\n")[0] + b"\n", id="signature-stripped"),
    ],
)
def test_forged_checkpoint_rejected(forge: Callable[[], bytes]) -> None:
    with pytest.raises(VerificationError):
        open_checkpoint(forge(), SIGNER.verifier())


# --- Malformed bodies ------------------------------------------------------------------

MALFORMED = [
    pytest.param(f"o\n042\n{ROOT_B64}\n", id="size-leading-zero"),
    pytest.param(f"o\n00\n{ROOT_B64}\n", id="size-double-zero"),
    pytest.param(f"o\n-1\n{ROOT_B64}\n", id="size-negative"),
    pytest.param(f"o\n+1\n{ROOT_B64}\n", id="size-plus-sign"),
    pytest.param(f"o\n0x10\n{ROOT_B64}\n", id="size-hex"),
    pytest.param(f"o\n4.2\n{ROOT_B64}\n", id="size-fraction"),
    pytest.param(f"o\n1e3\n{ROOT_B64}\n", id="size-exponent"),
    pytest.param(f"o\n1_000\n{ROOT_B64}\n", id="size-underscore"),
    pytest.param(f"o\n\u0664\u0662\n{ROOT_B64}\n", id="size-arabic-indic-digits"),
    pytest.param(f"o\n\uff14\uff12\n{ROOT_B64}\n", id="size-fullwidth-digits"),
    pytest.param(f"o\n 42\n{ROOT_B64}\n", id="size-leading-space"),
    pytest.param(f"o\n42 \n{ROOT_B64}\n", id="size-trailing-space"),
    pytest.param(f"o\nten\n{ROOT_B64}\n", id="size-words"),
    pytest.param(f"o\n\n{ROOT_B64}\n", id="size-empty"),
    pytest.param(f"o\n18446744073709551616\n{ROOT_B64}\n", id="size-above-uint64"),
    pytest.param(f"o\n99999999999999999999\n{ROOT_B64}\n", id="size-20-nines"),
    pytest.param(f"o\n100000000000000000000\n{ROOT_B64}\n", id="size-21-digits"),
    pytest.param("o\n5\n" + base64.b64encode(bytes(31)).decode() + "\n", id="root-31-bytes"),
    pytest.param("o\n5\n" + base64.b64encode(bytes(33)).decode() + "\n", id="root-33-bytes"),
    pytest.param("o\n5\n" + base64.b64encode(bytes(64)).decode() + "\n", id="root-64-bytes"),
    pytest.param("o\n5\n\n", id="root-empty"),
    pytest.param(f"o\n5\n{ROOT_B64.rstrip('=')}\n", id="root-unpadded"),
    pytest.param(f"o\n5\n{ROOT_B64[:20]} {ROOT_B64[20:]}\n", id="root-with-space"),
    pytest.param(f"o\n5\n{ROOT.hex()}\n", id="root-hex"),
    pytest.param(
        "o\n5\n" + base64.urlsafe_b64encode(b"\xff" * 32).decode() + "\n", id="root-urlsafe"
    ),
    pytest.param("", id="empty"),
    pytest.param("\n", id="newline-only"),
    pytest.param("o\n", id="origin-only"),
    pytest.param("o\n5\n", id="no-root-line"),
    pytest.param(f"\n5\n{ROOT_B64}\n", id="empty-origin"),
    pytest.param(f"o\n5\n{ROOT_B64}\n\n", id="empty-extension-line"),
    pytest.param(f"o\n5\n{ROOT_B64}\next\n\nmore\n", id="empty-extension-between"),
    pytest.param(f"o\n5\n{ROOT_B64}", id="no-trailing-newline"),
    pytest.param(f"o\n5\n{ROOT_B64}\next", id="extension-no-trailing-newline"),
    pytest.param(f"o\r\n5\r\n{ROOT_B64}\r\n", id="crlf"),
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_checkpoint_rejected(text: str) -> None:
    with pytest.raises(VerificationError):
        Checkpoint.from_text(text)


@pytest.mark.parametrize(
    "body",
    [
        f"o\n042\n{ROOT_B64}\n",
        f"o\n18446744073709551616\n{ROOT_B64}\n",
        f"o\n5\n{base64.b64encode(bytes(31)).decode()}\n",
        f"\n5\n{ROOT_B64}\n",
        "o\n5\n",
    ],
    ids=["size-leading-zero", "size-above-uint64", "root-31-bytes", "empty-origin", "no-root"],
)
def test_validly_signed_malformed_body_rejected(body: str) -> None:
    """A trusted key signing garbage does not make the garbage a checkpoint."""
    signed = sign_note(body, SIGNER).encode()
    with pytest.raises(VerificationError):
        open_checkpoint(signed, SIGNER.verifier())


@pytest.mark.parametrize("size", [0, 1, 9, 10, 4294967296, UINT64_MAX], ids=str)
def test_tree_size_boundaries_accepted(size: int) -> None:
    assert Checkpoint.from_text(f"o\n{size}\n{ROOT_B64}\n").size == size


# --- Our extension lines -------------------------------------------------------------------


def test_make_extensions_lines() -> None:
    assert make_extensions(1700000000000, "abc") == ("time 1700000000000", "writer abc")
    assert make_extensions(0, "0", final=True) == ("time 0", "writer 0", "final")


@pytest.mark.parametrize(
    ("extensions", "timestamp_ms", "writer", "final"),
    [
        pytest.param((), None, None, False, id="none"),
        pytest.param(
            make_extensions(1700000000123, "deadbeef"), 1700000000123, "deadbeef", False, id="ours"
        ),
        pytest.param(make_extensions(5, "ab", final=True), 5, "ab", True, id="ours-final"),
        pytest.param(("final", "writer 01", "time 9"), 9, "01", True, id="any-order"),
        pytest.param(("vendor thing", "time 7", "other"), 7, None, False, id="unknown-lines-kept"),
        pytest.param(("time 0",), 0, None, False, id="time-zero"),
        pytest.param(
            ("time 253402300799999",), 253402300799999, None, False, id="time-last-of-9999"
        ),
        # Past year 9999 no datetime holds it: such a line is not a time (verify's
        # report would fail to print it).
        pytest.param(("time 9999999999999999",), None, None, False, id="time-past-9999"),
        pytest.param(("time 99999999999999999",), None, None, False, id="time-17-digits"),
        pytest.param(("time -5",), None, None, False, id="time-negative"),
        pytest.param(("time 1.5",), None, None, False, id="time-fraction"),
        pytest.param(("time ",), None, None, False, id="time-empty"),
        pytest.param(("time  5",), None, None, False, id="time-double-space"),
        pytest.param(("Time 5",), None, None, False, id="time-capitalised"),
        pytest.param(("writer ABCD",), None, None, False, id="writer-upper-case"),
        pytest.param(("writer xyz",), None, None, False, id="writer-not-hex"),
        pytest.param(("writer " + "a" * 65,), None, None, False, id="writer-too-long"),
        pytest.param(("final ",), None, None, False, id="final-trailing-space"),
        pytest.param(("finalized",), None, None, False, id="final-prefix"),
        pytest.param(("Final",), None, None, False, id="final-capitalised"),
    ],
)
def test_extension_properties(
    extensions: tuple[str, ...], timestamp_ms: int | None, writer: str | None, final: bool
) -> None:
    cp = Checkpoint("o", 1, ROOT, extensions)
    assert (cp.timestamp_ms, cp.writer, cp.final) == (timestamp_ms, writer, final)
    parsed = Checkpoint.from_text(cp.to_text())
    assert (parsed.timestamp_ms, parsed.writer, parsed.final) == (timestamp_ms, writer, final)


# --- Origins: what the writer signs (issue 16, point 10) ---------------------------------

MALFORMED_ORIGINS = {
    "newline": "extproc-audit\n18446744073709551615/pod-a",
    "carriage return": "extproc-audit\r/pod-a",
    "space": "extproc audit/pod-a",
    "plus": "extproc+audit/pod-a",
    "empty": "",
    "non-ASCII": "extproc-audit\u202e/pod-a",
    "too long": "a" * (MAX_ORIGIN_CHARS + 1),
}


@pytest.mark.parametrize("origin", MALFORMED_ORIGINS.values(), ids=MALFORMED_ORIGINS.keys())
def test_malformed_origin_never_signed(origin: str) -> None:
    with pytest.raises(ConfigError):
        sign_checkpoint(Checkpoint(origin, 1, ROOT), SIGNER)


@pytest.mark.parametrize(
    "extensions",
    [("",), ("two\nlines",), ("time 1\n\n— forged",)],
    ids=["empty", "newline", "blank"],
)
def test_checkpoint_that_would_not_read_back_never_signed(extensions: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        sign_checkpoint(Checkpoint("audit.example/log", 1, ROOT, extensions), SIGNER)


@pytest.mark.parametrize(
    "argv",
    [
        [
            "serve",
            "--store",
            "{tmp}/s",
            "--key",
            "{tmp}/k",
            "--origin-prefix",
            NEWLINE_ORIGIN,
        ],
        ["verify", "{tmp}", "--vkey", SIGNER.verifier().to_text(), "--origin-prefix", "a b"],
        ["search", "{tmp}", "--no-verify", "--origin-prefix", "a+b"],
    ],
    ids=["serve", "verify", "search"],
)
def test_malformed_origin_prefix_is_a_usage_error(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "origin prefix" in err and "printable ASCII" in err
    assert err.count("\n") == 1


def test_malformed_origin_prefix_refused_by_serve_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--origin-prefix"):
        ServeConfig(str(tmp_path / "s"), tmp_path / "k", origin_prefix=NEWLINE_ORIGIN)
