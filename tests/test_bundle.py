"""The bundle format (extproc/core/bundle.py): what the writer puts and every
reader takes apart, round-trip tested on both encodings."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.core.bundle import bundle_bytes, bundle_lines, split_lines
from extproc.errors import VerificationError

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
