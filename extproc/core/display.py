"""Text from a log or a store, made safe to show on a terminal.

Entries hold values chosen by HTTP clients (paths, principals, request ids),
and object keys or signature names come from whoever could write the bucket
or hand over a file. Printed as they are, such text can drive the auditor's
terminal: ANSI escapes, carriage returns and backspaces rewrite what was
printed, bidi overrides reorder it, zero-width characters hide it, a newline
forges a line. `escape` turns it into one visible line that still shows what
was there. Pure: no I/O.
"""

from __future__ import annotations

_SHORT = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(c: str) -> str:
    short = _SHORT.get(c)
    if short is not None:
        return short
    if c.isprintable():
        return c
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """`text` as one line of printable characters, every other character escaped.

    Escaped: the backslash itself (`\\\\`, so an escape in the output always
    means one in the input), `\\n`, `\\r`, `\\t`, and every character that
    `str.isprintable()` refuses, as `\\xNN`, `\\uNNNN` or `\\UNNNNNNNN`: C0
    and C1 controls and DEL (category Cc, e.g. ESC `\\x1b`), format characters
    (Cf: bidi overrides such as `\\u202e`, zero-width spaces and joiners, the
    soft hyphen), line and paragraph separators (Zl, Zp), spaces other than
    U+0020 (Zs, e.g. no-break space `\\xa0`), surrogates, private-use and
    unassigned code points (Cs, Co, Cn). Everything else is kept as it is.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape_char(c) for c in text)


def quote(text: str) -> str:
    """`text` escaped and in double quotes (a quote inside as `\\"`), for a value
    that must not run into the next one on the same line, e.g. one with spaces."""
    return '"' + escape(text).replace('"', '\\"') + '"'
