"""The bundle format (extproc/core/bundle.py): what the writer puts and every
reader takes apart, round-trip tested on both encodings."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.core.bundle import MAX_BUNDLE_BYTES, bundle_bytes, bundle_lines, split_lines
from extproc.errors import VerificationError
from tests.budget import FUZZ, KIB, MIB, within_budget

# Entry lines: any bytes but the newline that ends each (a raw CR stays inside).
LINES = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), min_size=1)


def test_bundle_bytes_round_trip() -> None:
    lines = [b'{"a":1}', b'{"b":2}']
    for compress in (False, True):
        data = bundle_bytes(lines, compress=compress)
        assert bundle_lines(data, compressed=compress) == b'{"a":1}\n{"b":2}\n'
        # Deterministic: a retried put is byte-identical to the first attempt.
        assert data == bundle_bytes(list(lines), compress=compress)


@given(lines=LINES, compress=st.booleans())
def test_every_bundle_splits_back_into_its_lines(lines: list[bytes], compress: bool) -> None:
    data = bundle_lines(bundle_bytes(lines, compress=compress), compressed=compress)
    assert data.endswith(b"\n")
    assert split_lines(data) == lines


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        (b"", []),
        (b"a\n", [b"a"]),
        (b"a\nb", [b"a", b"b"]),  # no final newline: the verifier reports it
        (b"a\r\nb\x0bc\n", [b"a\r", b"b\x0bc"]),  # only \n ends an entry
        (b"\n\n", [b"", b""]),  # empty lines count: the verifier reports them
    ],
)
def test_only_newline_ends_an_entry(data: bytes, lines: list[bytes]) -> None:
    assert split_lines(data) == lines


def test_broken_gzip_is_a_verification_error() -> None:
    good = bundle_bytes([b"{}"], compress=True)
    for bad in (b"not gzip", good[:-4], gzip.compress(b"x")[:10]):
        with pytest.raises(VerificationError, match="bundle is not valid gzip"):
            bundle_lines(bad, compressed=True)
    assert bundle_lines(b"not gzip", compressed=False) == b"not gzip"


# --- fuzz: bundle objects come from whoever can write the bucket --------------------------

FUZZ_BOUND = 64 * KIB  # the reader's bound in the fuzz tests (the real one is 64 MiB)
# Built once: gzip members that expand past the bound, a bomb inside a second
# member, and one that expands a thousandfold from a few hundred bytes.
BOMBS = [
    gzip.compress(bytes(4 * MIB), 9),
    gzip.compress(b"{}\n", mtime=0) + gzip.compress(b"\n" * (2 * MIB), 9),
    gzip.compress(b"A" * (FUZZ_BOUND + 1), 9),
]
entry_lines = st.lists(
    st.one_of(
        st.binary(max_size=64),  # not UTF-8, raw CRs, NULs
        st.integers(0, 2 * FUZZ_BOUND).map(lambda n: b"x" * n),  # huge lines
    ),
    max_size=8,
).map(lambda lines: [line.replace(b"\n", b"") for line in lines])


@st.composite
def bundle_objects(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(object, gzip?): honest bundles, then broken, truncated, padded, bombs, noise."""
    compress = draw(st.booleans())
    kind = draw(st.sampled_from(["honest", "truncated", "flipped", "padded", "bomb", "noise"]))
    data = bundle_bytes(draw(entry_lines), compress=compress) if draw(entry_lines) else b""
    if kind == "honest":
        pass
    elif kind == "truncated":  # also: no final newline
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif kind == "flipped" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    elif kind == "padded":
        data += draw(st.sampled_from([b"\0" * 8, b"garbage", gzip.compress(b"more\n")]))
    elif kind == "bomb":
        data, compress = draw(st.sampled_from(BOMBS)), True
    else:
        data = draw(st.binary(max_size=4096))
    return data, compress


@FUZZ
@given(obj=bundle_objects())
def test_bundle_parser_fuzz_stays_within_budget(obj: tuple[bytes, bool]) -> None:
    """Only our error, and memory bounded by the reader's bound, not by the input."""
    data, compressed = obj
    with within_budget(memory=4 * FUZZ_BOUND + 512 * KIB, cpu=0.5):
        lines = bundle_lines(data, compressed=compressed, limit=FUZZ_BOUND)
        assert len(lines) <= FUZZ_BOUND
        split_lines(lines)


@pytest.mark.parametrize("compressed", [False, True], ids=["jsonl", "gzip"])
def test_bundle_over_the_bound_is_refused_at_one_byte_over(compressed: bool) -> None:
    exact = bundle_bytes([b"x" * (FUZZ_BOUND - 1)], compress=compressed)
    assert len(bundle_lines(exact, compressed=compressed, limit=FUZZ_BOUND)) == FUZZ_BOUND
    over = bundle_bytes([b"x" * FUZZ_BOUND], compress=compressed)
    with pytest.raises(VerificationError, match="over the reader's bound"):
        bundle_lines(over, compressed=compressed, limit=FUZZ_BOUND)


def test_gzip_bomb_at_the_format_bound_costs_the_bound_not_its_expansion() -> None:
    """The review's bomb, 1 MB of gzip that expands to 1 GiB, against the real bound."""
    bomb = gzip.compress(bytes(16 * MIB), 9) * 64  # 64 members of 16 MiB: 1 GiB
    assert len(bomb) < 2 * MIB
    with (
        within_budget(memory=3 * MAX_BUNDLE_BYTES, cpu=10.0),
        pytest.raises(VerificationError, match="over the reader's bound"),
    ):
        bundle_lines(bomb, compressed=True)
