"""Entry field names (core/fields.py) and the quick byte scans (core/scan.py).

A scan may only skip lines a parse would not match, and may only confirm
what a parse would say: each property here holds a scan against the
encoder (core.entry.encode) on entries built to fool it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.core import entry, fields, scan
from extproc.core.merkle import leaf_hash
from tests.budget import FUZZ, KIB, within_budget

ROOT = Path(__file__).resolve().parents[2]
NAMES = sorted(
    value for name, value in vars(fields).items() if name.isupper() and isinstance(value, str)
)
SCALARS = st.one_of(
    st.text(max_size=64),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.booleans(),
    st.none(),
)
# Values that carry the patterns a scan looks for, inside other fields.
TRAPS = st.one_of(
    st.text(max_size=32),
    st.sampled_from(['"ts":"2026-01-01T00:00:00.000000Z"', '"prev":"', ',"seq":1,', '"rid":"x"']),
)


def test_every_field_name_is_documented() -> None:
    """The names are the contract of docs/FORMAT.md: none of them is ours alone."""
    doc = (ROOT / "docs" / "FORMAT.md").read_text()
    words = {w for quoted in re.findall(r"`([^`]+)`", doc) for w in re.findall(r"\w+", quoted)}
    assert [name for name in NAMES if name not in words] == []


def test_field_names_are_defined_once() -> None:
    """A key that is the same string in two places is one name."""
    constants = [n for n, v in vars(fields).items() if n.isupper() and isinstance(v, str)]
    keys = [n for n in constants if not n.startswith(("KIND_", "EVENT_", "OUTCOME_", "AUTH_"))]
    values = [getattr(fields, n) for n in keys]
    assert len(values) == len(set(values))


@FUZZ
@given(st.sampled_from(NAMES), SCALARS, st.dictionaries(st.sampled_from(NAMES), TRAPS))
def test_member_is_what_the_encoder_writes(
    name: str, value: str | int | bool | None, others: dict[str, Any]
) -> None:
    line = entry.encode({**others, name: value})
    assert scan.member(name, value) in line
    assert scan.key(name) in line


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=20), st.binary(min_size=1, max_size=8))
def test_lines_holding_misses_no_line(lines: list[bytes], needle: bytes) -> None:
    expected = [(i, line) for i, line in enumerate(lines) if needle in line]
    data = b"".join(line + b"\n" for line in lines)
    assert list(scan.lines_holding(lines, (needle,))) == expected
    assert list(scan.lines_holding(lines, (needle,), data)) == expected
    assert list(scan.lines_holding(lines, (needle, b"\xff\xfe\xfd"), data)) == [
        (i, line) for i, line in enumerate(lines) if needle in line or b"\xff\xfe\xfd" in line
    ]


def _entry(seq: int, prev: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        **extra,
        fields.V: entry.FORMAT_VERSION,
        fields.SEQ: seq,
        fields.PREV: prev,
        fields.TS: "2026-11-26T16:34:36.572195Z",
    }


@FUZZ
@given(st.dictionaries(st.sampled_from([fields.REQ, fields.SRC, fields.REPORTER]), TRAPS))
def test_ts_planted_in_a_value_is_not_taken_for_the_entry_ts(planted: dict[str, Any]) -> None:
    extra: dict[str, Any] = {section: {fields.PATH: value} for section, value in planted.items()}
    extra[fields.KIND] = fields.KIND_REQUEST
    line = entry.encode(_entry(7, "", extra))
    assert scan.top_level_ts(line) == b"2026-11-26T16:34:36.572195Z"


@FUZZ
@given(st.binary(max_size=4 * KIB))
def test_top_level_ts_fuzz(raw: bytes) -> None:
    with within_budget(memory=64 * KIB, cpu=0.1, allowed=()):
        ts = scan.top_level_ts(raw)
    assert ts is None or (len(ts) == 27 and ts in raw)


def _chain(extras: list[dict[str, Any]]) -> tuple[list[bytes], list[bytes]]:
    lines, leaves, prev = [], [], ""
    for seq, extra in enumerate(extras):
        line = entry.encode(_entry(seq, prev, extra))
        leaf = leaf_hash(line)
        lines.append(line)
        leaves.append(leaf)
        prev = leaf.hex()
    return lines, leaves


EXTRAS = st.lists(
    st.fixed_dictionaries(
        {fields.KIND: st.sampled_from([fields.KIND_REQUEST, fields.KIND_ACCESS])},
        optional={
            fields.RID: TRAPS,
            fields.REQ: st.fixed_dictionaries({fields.PATH: TRAPS}),
            # Sorts before `prev`: a bracket in it sends the line to the parse.
            fields.DST: TRAPS.filter(lambda v: "[" not in v and "{" not in v),
        },
    ),
    min_size=1,
    max_size=8,
)


@FUZZ
@given(EXTRAS)
def test_chain_of_the_writers_encoding_is_confirmed_by_the_quick_check(
    extras: list[dict[str, Any]],
) -> None:
    lines, leaves = _chain(extras)
    assert scan.chain_mismatches(lines, 0, b"", leaves) == []


@FUZZ
@given(EXTRAS, TRAPS)
def test_bracket_before_prev_is_left_to_the_parse(extras: list[dict[str, Any]], value: str) -> None:
    """A value before `prev` that could hide a nested object is never confirmed by bytes."""
    extras[0][fields.DST] = value + "["
    lines, leaves = _chain(extras)
    assert 0 in scan.chain_mismatches(lines, 0, b"", leaves)


@FUZZ
@given(EXTRAS, st.data())
def test_changed_seq_or_prev_is_left_to_the_parse(
    extras: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Whatever a planted value says, a line whose top-level seq or prev is
    not the chain's is returned for the full parse."""
    lines, leaves = _chain(extras)
    at = data.draw(st.integers(0, len(lines) - 1))
    obj = orjson.loads(lines[at])
    if data.draw(st.booleans()):
        obj[fields.SEQ] += 1
    else:
        obj[fields.PREV] = "0" * 64
    lines[at] = entry.encode(obj)
    assert at in scan.chain_mismatches(lines, 0, b"", leaves)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (fields.RID, 'a"b', b'"rid":"a\\"b"'),
        (fields.EVENT, fields.EVENT_FOREIGN, b'"event":"foreign"'),
        (fields.AUTH, fields.AUTH_NONE, b'"auth":"unauthenticated"'),
        (fields.SEQ, 12, b'"seq":12'),
    ],
)
def test_member_bytes(name: str, value: str | int, expected: bytes) -> None:
    """The patterns the readers matched by hand before, byte for byte."""
    assert scan.member(name, value) == expected
