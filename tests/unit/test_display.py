"""extproc.core.display: text from entries and stores, made safe for a terminal."""

from __future__ import annotations

import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.core.display import escape, quote


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("/api/users/7", "/api/users/7"),
        ("ünïcødé /日本/😀 a b", "ünïcødé /日本/😀 a b"),  # printable text is kept
        ("\x1b[31mred", "\\x1b[31mred"),  # ANSI CSI
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),  # OSC: sets the window title
        ("a\rb\nc\td", "a\\rb\\nc\\td"),
        ("ab\b\b", "ab\\x08\\x08"),
        ("\x00\x7f", "\\x00\\x7f"),  # NUL, DEL
        ("\x9b2J\x85", "\\x9b2J\\x85"),  # C1 CSI, NEL
        ("\u202eabc\u202c", "\\u202eabc\\u202c"),  # bidi override, pop
        ("\u2066x\u2069", "\\u2066x\\u2069"),  # bidi isolates
        ("a\u200bb\u200dc\ufeff\u00ad", "a\\u200bb\\u200dc\\ufeff\\xad"),  # zero-width, soft hyphen
        ("\u2028\u2029", "\\u2028\\u2029"),  # line, paragraph separators
        ("a\u00a0b\u3000c", "a\\xa0b\\u3000c"),  # spaces posing as U+0020
        ("\U000e0041\ue000", "\\U000e0041\\ue000"),  # tag character, private use
        ("C:\\x1b", "C:\\\\x1b"),  # a backslash is escaped: never mistaken for an escape
    ],
    ids=[
        "plain",
        "printable-unicode",
        "ansi-csi",
        "osc-title",
        "cr-lf-tab",
        "backspace",
        "nul-del",
        "c1-controls",
        "bidi-override",
        "bidi-isolate",
        "zero-width",
        "line-separators",
        "look-alike-spaces",
        "tag-private-use",
        "backslash",
    ],
)
def test_escape(text: str, shown: str) -> None:
    assert escape(text) == shown


def test_quote_escapes_quotes_inside() -> None:
    assert quote('a" b=\\"c') == '"a\\" b=\\\\\\"c"'
    assert quote("x\n") == '"x\\n"'


DANGEROUS = ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(max_codepoint=sys.maxunicode)))
def test_escaped_text_is_one_printable_line_and_unambiguous(text: str) -> None:
    out = escape(text)
    assert out.isprintable()
    assert not any(unicodedata.category(c) in DANGEROUS for c in out)
    # Reading the escapes back gives the text: distinct texts never look alike.
    assert out.encode("latin-1", "backslashreplace").decode("unicode_escape") == text
