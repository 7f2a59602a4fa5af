"""x-forwarded-client-cert (XFCC), read by the grammar Envoy writes it in.

Envoy's HTTP connection manager writes one element per hop
(source/common/http/conn_manager_utility.cc, `mutateXfccRequestHeader`):

    By=<local URI SAN>;Hash=<hex SHA-256>;Cert="<url-encoded PEM>";
    Chain="<url-encoded PEMs>";Subject="<RFC 2253 subject>";URI=<peer URI SAN>;DNS=<dns SAN>

pairs joined by `;`, elements by `,` (APPEND_FORWARD appends `,<element>` to
what the client sent; SANITIZE_SET replaces the header with one element).
Envoy quotes Cert, Chain and Subject, and escapes nothing itself: a quoted
value is an RFC 2253 subject (whose own escapes are `\\X` and `\\XX`) or
URL-encoded PEM, and a bare value is a URI, a DNS name or hex. Envoy's docs
(x-forwarded-client-cert): keys are case-insensitive, values case-sensitive,
and a value holding `,` `;` or `=` is double-quoted, with `\\"` for a quote.

This module accepts that grammar and refuses everything else with an
XfccError: an unbalanced quote, a bad escape (a backslash not followed by a
printable character, or outside quotes), a bare value with a quote, `,` `;`
`=` or a character outside printable ASCII, text after a closing quote, an
unknown or repeated key (Envoy repeats By, URI and DNS only for a certificate
with several such SANs: which one would be the identity?), an empty pair or
element, and more elements or bytes than the bounds. A header it accepts has
one reading: `render` writes the elements back in Envoy's form and `parse` of
that gives the same elements (tests/unit/test_xfcc.py). Pure: no I/O.

Trust reads the own sidecar's element with `parse` (trust/sources.py: any
fault refuses the stream); an audited request's header, recorded as its
source, is read with `xfcc_elements` (a header in no one's grammar names nobody).
"""

from __future__ import annotations

import re

from extproc.errors import AuditError

XFCC_HEADER = "x-forwarded-client-cert"

# Envoy's spelling of each key, by its lower-case form (the dict keys of an element).
KEYS = {
    "by": "By",
    "hash": "Hash",
    "cert": "Cert",
    "chain": "Chain",
    "subject": "Subject",
    "uri": "URI",
    "dns": "DNS",
}
QUOTED_KEYS = frozenset({"cert", "chain", "subject"})  # always double-quoted by Envoy
# Bounds, checked before any work. A chain of URL-encoded PEMs is a few KiB per
# certificate; gRPC metadata is 8 KiB by default; Envoy's request headers 60 KiB.
MAX_BYTES = 64 * 1024
MAX_ELEMENTS = 32  # hops an APPEND_FORWARD header may hold

# Both possessive (`*+`): nothing to backtrack into, so the regex engine keeps
# no backtracking stack (it took 5 MB for 64 KiB of escapes).
# A bare value: printable ASCII but `"` `,` `;` `=` `\` (may be empty: Envoy writes `URI=`).
_BARE = re.compile(r"[!#-+\--:<>-\[\]-~]*+")
# A quoted value (RFC 9110 quoted-string over printable ASCII): text but `"` and
# `\`, or a backslash and the printable character it escapes.
_QUOTED = re.compile(r'"((?:[ !#-\[\]-~]|\\[ -~])*+)"')
_KEY = re.compile(r"([A-Za-z]+)=")


class XfccError(AuditError):
    """The header is not one Envoy writes: it has no unambiguous reading."""


def parse(value: str, *, max_elements: int = MAX_ELEMENTS) -> list[dict[str, str]]:
    """The elements of an XFCC header, oldest first, each as lower-case key -> value.

    A quoted value is returned as written between its quotes (escapes kept:
    they belong to the subject's own RFC 2253 form; Envoy adds none). Raises
    XfccError for any header outside Envoy's grammar, naming the offset.
    """
    if len(value) > MAX_BYTES:
        raise XfccError(f"longer than {MAX_BYTES} bytes")
    if not value:
        raise XfccError("empty")
    elements: list[dict[str, str]] = []
    element: dict[str, str] = {}
    at, end = 0, len(value)
    while True:
        key_match = _KEY.match(value, at)
        if key_match is None:
            raise XfccError(f"at {at}: expected KEY=VALUE")
        key = key_match.group(1).lower()
        if key not in KEYS:
            raise XfccError(f"at {at}: unknown key {key_match.group(1)[:16]!r}")
        if key in element:
            raise XfccError(f"at {at}: {KEYS[key]} repeated in one element")
        at = key_match.end()
        quoted = value.startswith('"', at)
        if quoted:
            match = _QUOTED.match(value, at)
            if match is None:
                raise XfccError(f"at {at}: {KEYS[key]}: {_quoted_fault(value, at)}")
            element[key] = match.group(1)
        else:
            match = _BARE.match(value, at)
            assert match is not None  # `*`: matches the empty string
            element[key] = match.group(0)
        at = match.end()
        if at == end:
            elements.append(element)
            return elements
        separator = value[at]
        if separator == ",":
            elements.append(element)
            if len(elements) >= max_elements:
                raise XfccError(f"more than {max_elements} elements")
            element = {}
        elif separator != ";":
            where = "after the quoted value" if quoted else "in the value"
            raise XfccError(f"at {at}: {_char(separator)} {where} of {KEYS[key]}")
        at += 1
        if at == end:
            raise XfccError("ends with a separator (an empty pair or element)")


def xfcc_elements(value: str) -> list[dict[str, str]]:
    """The elements of an audited request's header (lower-case key -> value,
    oldest first), or none if it is not in Envoy's grammar: what has no one
    reading names nobody."""
    try:
        return parse(value)
    except XfccError:
        return []


def _quoted_fault(value: str, at: int) -> str:
    """Why the quoted value at `at` does not end (the error path only)."""
    i = at + 1
    while i < len(value) and value[i] != '"':  # a closing quote: _QUOTED would have matched
        c = value[i]
        if c == "\\":
            if i + 1 >= len(value) or not " " <= value[i + 1] <= "~":
                return f"bad escape at {i}"
            i += 2
            continue
        if not " " <= c <= "~":
            return f"{_char(c)} at {i} in a quoted value"
        i += 1
    return "unbalanced quote (no closing '\"')"


def _char(c: str) -> str:
    return repr(c) if " " <= c <= "~" else f"character U+{ord(c):04X}"


def render(elements: list[dict[str, str]]) -> str:
    """Elements back in Envoy's form (what `parse` reads as the same elements):
    Cert, Chain and Subject quoted as Envoy writes them, any other value bare
    unless it holds what only a quoted value may."""
    return ",".join(
        ";".join(
            f"{KEYS[key]}={val}"
            if key not in QUOTED_KEYS and _BARE.fullmatch(val)
            else f'{KEYS[key]}="{val}"'
            for key, val in element.items()
        )
        for element in elements
    )
