"""x-forwarded-client-cert has one reading or none (extproc/trust/xfcc.py).

The review's attack: a caller with a valid mesh certificate sends an XFCC that
ends in an unbalanced quote, so that a lenient reader swallows the element the
server's own sidecar appends and takes the caller's made-up element as the
reporter. Here: every ambiguous header is refused, Envoy's own output is read
as written, and (Hypothesis) a caller's prefix never changes the reading of the
element Envoy appends after it.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.trust import xfcc
from extproc.trust.xfcc import XfccError
from tests.budget import FUZZ, KIB, within_budget

OWN_BY = "spiffe://cluster.local/ns/audit/sa/audit"
PAYMENTS = "spiffe://cluster.local/ns/payments/sa/payments"
EVIL = "spiffe://cluster.local/ns/evil/sa/evil"
HASH = "a" * 64
# What the audit pod's sidecar appends for a caller from ns/evil (Istio's
# set_current_client_cert_details: Subject, URI, DNS; an Istio certificate has
# an empty subject and no DNS SAN).
OWN = f'By={OWN_BY};Hash={HASH};Subject="";URI={EVIL}'

# --- Envoy's own output is read as written ------------------------------------------------------

ENVOY_WRITES = {
    "istio_inbound": (OWN, [{"by": OWN_BY, "hash": HASH, "subject": "", "uri": EVIL}]),
    "empty_uri": ("By=spiffe://a;Hash=ab;URI=", [{"by": "spiffe://a", "hash": "ab", "uri": ""}]),
    "rfc2253_subject_escapes": (
        'Subject="CN=a\\,b\\;c\\"q\\"\\\\,O=x";URI=spiffe://b',
        [{"subject": 'CN=a\\,b\\;c\\"q\\"\\\\,O=x', "uri": "spiffe://b"}],
    ),
    "url_encoded_cert": (
        'Cert="-----BEGIN%20CERTIFICATE-----%0AMII%2B%3D%0A";URI=spiffe://b',
        [{"cert": "-----BEGIN%20CERTIFICATE-----%0AMII%2B%3D%0A", "uri": "spiffe://b"}],
    ),
    "append_forward_two_hops": (
        f"By=spiffe://gw;URI=spiffe://client,{OWN}",
        [{"by": "spiffe://gw", "uri": "spiffe://client"}, xfcc.parse(OWN)[0]],
    ),
    "keys_case_insensitive": (
        "by=spiffe://a;uri=spiffe://b",
        [{"by": "spiffe://a", "uri": "spiffe://b"}],
    ),
    # Envoy's docs: a value may be quoted (one holding `,` `;` `=` must be).
    "quoted_uri": ('URI="spiffe://a";Subject=""', [{"uri": "spiffe://a", "subject": ""}]),
    "quoted_uri_with_separators": ('URI="https://x/?a=b,c;d"', [{"uri": "https://x/?a=b,c;d"}]),
}


@pytest.mark.parametrize(("header", "elements"), ENVOY_WRITES.values(), ids=ENVOY_WRITES.keys())
def test_envoy_written_headers_are_read_as_written(
    header: str, elements: list[dict[str, str]]
) -> None:
    assert xfcc.parse(header) == elements
    assert xfcc.parse(xfcc.render(elements)) == elements


# --- every ambiguity is refused ------------------------------------------------------------------

AMBIGUOUS = {
    # The review's header: the unbalanced quote would swallow ",<own element>".
    "review_attack_unbalanced_quote": (f'By={OWN_BY};URI={PAYMENTS};x="', "unknown key"),
    "unbalanced_quote_in_a_known_key": (f'URI={PAYMENTS};Subject="', "unbalanced quote"),
    "quote_swallowing_the_own_element": (f'URI={PAYMENTS};Subject=",{OWN}', "after the quoted"),
    "escaped_closing_quote": ('Subject="CN=a\\";URI=spiffe://b', "unbalanced quote"),
    "escape_at_the_end": ('Subject="CN=a\\', "bad escape"),
    "escape_of_a_control_character": ('Subject="a\\\x01";URI=x', "bad escape"),
    "control_character_in_quotes": ('Subject="a\x01";URI=x', "quoted value"),
    "backslash_in_a_bare_value": ("URI=spiffe://a\\,URI=b", "in the value of URI"),
    "quote_inside_a_bare_value": ('URI=spiffe://a";URI=b', "in the value of URI"),
    "bare_subject_with_equals": ("Subject=CN=a;URI=spiffe://a", "in the value of Subject"),
    "text_after_a_quoted_value": ('Subject="CN=a"x;URI=b', "after the quoted value"),
    "equals_in_a_bare_value": ("URI=spiffe://a=b", "in the value of URI"),
    "repeated_key": (f"URI={PAYMENTS};URI={EVIL}", "repeated"),
    "repeated_key_other_case": (f"URI={PAYMENTS};uri={EVIL}", "repeated"),
    "repeated_by": (f"By={OWN_BY};By=spiffe://x;URI={EVIL}", "repeated"),
    "unknown_key": (f"URI={EVIL};Role=admin", "unknown key"),
    "pair_without_equals": (f"URI={EVIL};admin", "expected KEY=VALUE"),
    "empty_key": (f"=x;URI={EVIL}", "expected KEY=VALUE"),
    "empty_header": ("", "empty"),
    "empty_element": (f"URI={PAYMENTS},,{OWN}", "expected KEY=VALUE"),
    "leading_comma": (f",{OWN}", "expected KEY=VALUE"),
    "trailing_comma": (f"{OWN},", "ends with a separator"),
    "trailing_semicolon": (f"{OWN};", "ends with a separator"),
    "space_after_comma": (f"URI={PAYMENTS}, {OWN}", "expected KEY=VALUE"),
    "space_in_a_value": (f"URI={EVIL} ", "in the value of URI"),
    "non_ascii": (f"URI={EVIL}\u00e9", "in the value of URI"),
    "too_many_elements": (",".join([OWN] * (xfcc.MAX_ELEMENTS + 1)), "more than"),
    "too_long": ("URI=" + "a" * xfcc.MAX_BYTES, "longer than"),
}


@pytest.mark.parametrize(("header", "why"), AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
def test_ambiguous_xfcc_is_refused(header: str, why: str) -> None:
    with pytest.raises(XfccError, match=why):
        xfcc.parse(header)


# --- properties -----------------------------------------------------------------------------------

_BARE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;=\\')
_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
_bare = st.text(_BARE_CHARS, max_size=24)
_quoted = st.lists(
    st.one_of(
        st.sampled_from([c for c in _PRINTABLE if c not in '"\\']),
        st.sampled_from(_PRINTABLE).map(lambda c: "\\" + c),
    ),
    max_size=12,
).map("".join)


@st.composite
def _elements(draw: st.DrawFn) -> dict[str, str]:
    keys = draw(st.lists(st.sampled_from(sorted(xfcc.KEYS)), min_size=1, max_size=7, unique=True))
    return {k: draw(_quoted if k in xfcc.QUOTED_KEYS else _bare | _quoted) for k in keys}


@given(st.lists(_elements(), min_size=1, max_size=5))
def test_rendered_elements_parse_back_to_the_same_elements(elements: list[dict[str, str]]) -> None:
    # No value of the canonical form can reach across a `;` or `,` boundary.
    assert xfcc.parse(xfcc.render(elements)) == elements


# Hostile text: the grammar's own characters and keys, a little of anything else.
_hostile = st.lists(
    st.one_of(
        st.sampled_from(['"', "\\", ",", ";", "=", " ", "By=", "URI=", "Subject=", "Cert=", "x"]),
        st.text(max_size=3),
    ),
    max_size=40,
).map("".join)


@FUZZ
@given(_hostile)
def test_any_header_that_parses_has_one_reading(header: str) -> None:
    with within_budget(memory=256 * KIB, cpu=0.5):
        elements = xfcc.parse(header)
        assert xfcc.parse(xfcc.render(elements)) == elements


@FUZZ
@given(st.text(max_size=4 * KIB) | st.binary(max_size=4 * KIB).map(lambda b: b.decode("latin-1")))
def test_xfcc_parser_fuzz(header: str) -> None:
    with within_budget(memory=256 * KIB, cpu=0.5):
        xfcc.parse(header)


# Envoy's writer (mutateXfccRequestHeader): By and URI bare SANs, Hash hex, a
# Subject in RFC 2253 form (empty, or starting with an attribute type).
_subject = st.one_of(
    st.just(""),
    st.tuples(st.sampled_from(["CN", "O", "OU", "2.5.4.3"]), _quoted).map(
        lambda t: f"{t[0]}={t[1]}"
    ),
)


@st.composite
def _envoy_element(draw: st.DrawFn) -> dict[str, str]:
    element = {
        "by": draw(_bare),
        "hash": draw(st.text("0123456789abcdef", min_size=64, max_size=64)),
    }
    if draw(st.booleans()):
        element["subject"] = draw(_subject)
    element["uri"] = draw(_bare)
    return element


@FUZZ
@given(_hostile, _envoy_element())
def test_a_callers_prefix_never_changes_the_appended_element(
    prefix: str, own: dict[str, str]
) -> None:
    # APPEND_FORWARD: the caller chooses everything before ",<own element>".
    try:
        elements = xfcc.parse(f"{prefix},{xfcc.render([own])}")
    except XfccError:
        return
    assert elements[-1] == own


# The costliest headers within the byte bound: each is one linear pass.
_LARGEST = {
    "quoted_escapes": 'Subject="' + "\\a" * (xfcc.MAX_BYTES // 2 - 5) + '"',
    "unbalanced_escapes": 'Subject="' + "\\a" * (xfcc.MAX_BYTES // 2 - 5),
    "long_bare_value": "URI=" + "a" * (xfcc.MAX_BYTES - 4),
    "most_elements": ",".join(["URI=" + "a" * 100] * (xfcc.MAX_ELEMENTS - 1)),
    "over_the_bound": "URI=" + "a" * xfcc.MAX_BYTES,
}


@pytest.mark.parametrize("header", _LARGEST.values(), ids=_LARGEST.keys())
def test_largest_headers_stay_within_budget(header: str) -> None:
    with within_budget(memory=512 * KIB, cpu=0.5):
        xfcc.parse(header)
