"""Capture and redaction: what a hostile or careless request can put in the log.

Messages are real Envoy ext_proc protobufs (header values in raw_value bytes,
attributes in the ext_proc Struct), as Envoy sends them.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.attributes import ATTR_NAMESPACE
from extproc.core import entry
from extproc.core.redact import (
    DEFAULT_CLEAR_HEADERS,
    DEFAULT_URL_HEADERS,
    REDACTED,
    TRUNCATED_MARK,
    RedactionPolicy,
    ascii_lower,
    stored_hash,
)
from extproc.errors import ConfigError
from extproc.server.capture import DEFAULT_MAX_HEADERS, Capturer, xfcc_uris

Header = tuple[str, str | bytes]


def header_map(headers: Sequence[Header]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(
        headers=[
            base_pb2.HeaderValue(key=k, raw_value=v if isinstance(v, bytes) else v.encode())
            for k, v in headers
        ]
    )


def request_msg(
    headers: Sequence[Header] = (),
    *,
    path: str | bytes = "/api/items",
    attributes: dict[str, Any] | None = None,
) -> pb.ProcessingRequest:
    pseudo: list[Header] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "api.example"),
        (":path", path),
    ]
    msg = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(headers=header_map(pseudo + list(headers)))
    )
    if attributes is not None:
        attrs = struct_pb2.Struct()
        attrs.update(attributes)
        msg.attributes[ATTR_NAMESPACE].CopyFrom(attrs)
    return msg


def response_msg(status: str, headers: Sequence[Header] = ()) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(
            headers=header_map([(":status", status), *headers]),
        )
    )


def capture(
    headers: list[Header], policy: RedactionPolicy | None = None, **kw: Any
) -> dict[str, Any]:
    return Capturer(policy or RedactionPolicy()).request(request_msg(headers, **kw))


def clearing(names: Iterable[str], **kw: Any) -> RedactionPolicy:
    """A policy that also stores these (test) headers in clear: for tests of
    bounds and truncation, which need values that are stored as sent."""
    return RedactionPolicy(clear_headers=DEFAULT_CLEAR_HEADERS | frozenset(names), **kw)


def sealed(fields: dict[str, Any]) -> bytes:
    """The entry as the appender stores it: fitted, then v/seq/prev/ts added."""
    fitted = entry.fit(fields)
    fitted.update(
        v=entry.FORMAT_VERSION, seq=123456789, prev="ab" * 32, ts="2026-01-01T00:00:00.000000Z"
    )
    return entry.encode(fitted)


# --- redaction of credentials ------------------------------------------------------------


REDACTED_HEADERS = [
    (
        "authorization",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl",
        "Bearer [redacted]",
    ),
    ("authorization", "Basic dXNlcjpodW50ZXIy", "Basic [redacted]"),
    (
        "authorization",
        "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20260101/us-east-1/s3/aws4_request, "
        "Signature=f00d",
        "AWS4-HMAC-SHA256 [redacted]",
    ),
    ("authorization", "rawtokenwithoutscheme", REDACTED),
    ("authorization", "{not-a-scheme} tok3n", REDACTED),
    ("proxy-authorization", "Basic cHJveHk6c2VjcmV0", "Basic [redacted]"),
    ("cookie", "session=s3cr3t-sess; theme=dark", "session=[redacted]; theme=[redacted]"),
    ("cookie", "lonevalue; sid=abc=def", "[redacted]; sid=[redacted]"),
    ("x-api-key", "k-live-123456", REDACTED),
    ("x-auth-token", "tok-98765", REDACTED),
    ("x-amz-security-token", "FwoGZXIvYXdzEXAMPLE", REDACTED),
]


@pytest.mark.parametrize(("name", "value", "stored"), REDACTED_HEADERS)
def test_credential_headers_are_redacted(name: str, value: str, stored: str) -> None:
    fields = capture([(name, value), ("user-agent", "curl/8.5")])
    assert fields["req"]["headers"][name] == stored
    assert fields["req"]["headers"]["user-agent"] == "curl/8.5"  # the rest stays


def test_set_cookie_keeps_only_the_cookie_name() -> None:
    msg = response_msg("200", [("set-cookie", "sid=s3cr3t-value; Path=/; HttpOnly; Secure")])
    fields = Capturer(RedactionPolicy()).response(msg)
    assert fields["resp"] == {"status": 200, "headers": {"set-cookie": "sid=[redacted]"}}


def test_unknown_header_is_hashed_and_clear_header_widens() -> None:
    headers: list[Header] = [
        ("x-tenant-secret", "tenant-pw"),
        ("x-tenant-id", "t-1"),
        ("accept", "*/*"),
    ]
    fields = capture(headers)
    assert fields["req"]["headers"] == {
        "x-tenant-secret": REDACTED,
        "x-tenant-id": REDACTED,
        "accept": "*/*",
    }
    widened = capture(headers, clearing({"x-tenant-id"}))
    assert widened["req"]["headers"]["x-tenant-id"] == "t-1"


def test_redact_header_forces_hashing_of_an_allowed_name() -> None:
    policy = RedactionPolicy(redact_headers=frozenset({"User-Agent", "referer"}))
    fields = capture([("user-agent", "curl/8.5"), ("referer", "https://a/p")], policy)
    assert fields["req"]["headers"] == {"user-agent": REDACTED, "referer": REDACTED}


def test_repeated_headers_are_joined_then_redacted() -> None:
    fields = capture(
        [("cookie", "a=1"), ("cookie", "b=2"), ("x-api-key", "k1"), ("x-api-key", "k2")],
        RedactionPolicy(hmac_key=HMAC_KEY),
    )
    headers = fields["req"]["headers"]
    # Joined with "," as Envoy's access log sends them: both captures store the same.
    assert headers["cookie"] == f"a={hmac_of('1')},b={hmac_of('2')}"
    assert headers["x-api-key"] == hmac_of("k1,k2")


def test_non_utf8_secret_is_not_stored_as_base64() -> None:
    # A Latin-1 byte in a cookie or token must not smuggle the raw value into
    # the log through the {"b64": ...} form used for other binary headers.
    raw = b"session=s3cr3t-\xe9t\xe9; theme=dark"
    fields = capture([("cookie", raw), ("authorization", b"Bearer tok\xff3n-secret")])
    encoded = sealed(fields)
    for secret in (b"s3cr3t", b"tok\xff3n", base64.b64encode(raw)):
        assert secret not in encoded
    assert b"b64" not in encoded
    assert fields["req"]["headers"]["cookie"] == "session=[redacted]; theme=[redacted]"
    assert fields["req"]["headers"]["authorization"] == "Bearer [redacted]"


# --- keyed hashes -------------------------------------------------------------------------


HMAC_KEY = b"k" * 32


def hmac_of(value: str, key: bytes = HMAC_KEY) -> str:
    return stored_hash(key, value.encode())


def test_hmac_equal_secrets_give_equal_markers() -> None:
    policy = RedactionPolicy(hmac_key=HMAC_KEY)
    one = capture([("authorization", "Bearer tokA"), ("cookie", "sid=tokA")], policy)
    two = capture([("authorization", "Bearer tokA"), ("cookie", "sid=tokA")], policy)
    assert one["req"]["headers"] == two["req"]["headers"]
    assert one["req"]["headers"]["authorization"] == "Bearer " + hmac_of("tokA")
    # Only the credentials are hashed, so the same token matches across headers.
    assert one["req"]["headers"]["cookie"] == "sid=" + hmac_of("tokA")


def test_hmac_different_secrets_give_different_markers() -> None:
    policy = RedactionPolicy(hmac_key=HMAC_KEY)
    one = capture([("authorization", "Bearer tokA")], policy)["req"]["headers"]
    two = capture([("authorization", "Bearer tokB")], policy)["req"]["headers"]
    assert one != two


def test_hmac_markers_depend_on_the_key() -> None:
    one = capture([("x-api-key", "same")], RedactionPolicy(hmac_key=b"a" * 32))
    two = capture([("x-api-key", "same")], RedactionPolicy(hmac_key=b"b" * 32))
    assert one["req"]["headers"]["x-api-key"] != two["req"]["headers"]["x-api-key"]


def test_hmac_key_and_secrets_never_reach_the_entry() -> None:
    key = b"hmac-key-material-0123456789abcdef"
    policy = RedactionPolicy(hmac_key=key)
    fields = capture(
        [("authorization", "Bearer super-secret-bearer"), ("cookie", "sid=super-secret-cookie")],
        policy,
        path="/cb?code=super-secret-code&state=ok",
    )
    encoded = sealed(fields)
    for secret in (key, key.hex().encode(), b"super-secret"):
        assert secret not in encoded
    assert key.decode() not in repr(policy)


# --- query strings --------------------------------------------------------------------------


QUERY = "/search?q=shoes&token=abc123&API_KEY=k9&%74oken=enc0ded&flag&page=2&%50AGE=3"
QUERY_MODES = [
    (
        "sensitive",
        "q=[redacted]&token=[redacted]&API_KEY=[redacted]&%74oken=[redacted]&[redacted]&page=2"
        "&%50AGE=3",
    ),
    (
        "all",
        "q=[redacted]&token=[redacted]&API_KEY=[redacted]&%74oken=[redacted]&[redacted]"
        "&page=[redacted]&%50AGE=[redacted]",
    ),
    ("keep", QUERY.split("?", 1)[1]),
    ("drop", None),
]


@pytest.mark.parametrize(("mode", "stored"), QUERY_MODES)
def test_query_modes(mode: str, stored: str | None) -> None:
    fields = capture([], RedactionPolicy(query_mode=mode), path=QUERY)
    assert fields["req"]["path"] == "/search"
    assert fields["req"].get("query") == stored
    if mode != "keep":
        assert b"abc123" not in sealed(fields)


def test_unknown_query_mode_is_rejected() -> None:
    with pytest.raises(ConfigError, match="query-mode"):
        RedactionPolicy(query_mode="some")


def test_path_without_query_has_no_query_field() -> None:
    assert "query" not in capture([], path="/plain")["req"]


def test_clear_param_widens_and_redact_query_param_narrows() -> None:
    path = "/x?tenant=acme&page=4711&token=t0k"
    widened = RedactionPolicy(clear_params=frozenset({"Tenant", "page"}))
    assert (
        capture([], widened, path=path)["req"]["query"] == "tenant=acme&page=4711&token=[redacted]"
    )
    narrowed = RedactionPolicy(redact_query_params=frozenset({"page"}))
    assert capture([], narrowed, path=path)["req"]["query"] == (
        "tenant=[redacted]&page=[redacted]&token=[redacted]"
    )


# --- odd bytes, sizes and repeats -----------------------------------------------------------


def test_non_utf8_allowed_header_is_stored_as_base64_and_others_hashed() -> None:
    raw = b"caf\xe9 \xff\xfe"
    fields = capture([("user-agent", raw), ("x-legacy", raw)])
    assert fields["req"]["headers"]["user-agent"] == {"b64": base64.b64encode(raw).decode()}
    assert fields["req"]["headers"]["x-legacy"] == REDACTED
    sealed(fields)  # and it still encodes


def test_non_utf8_pseudo_header_does_not_break_capture() -> None:
    fields = capture([], path=b"/caf\xe9")
    assert fields["req"]["path"] == "/caf\ufffd"
    sealed(fields)


def test_oversized_value_is_truncated_with_marker() -> None:
    policy = clearing({"x-big", "x-small"}, max_value_bytes=100)
    fields = capture([("x-big", "a" * 5000), ("x-small", "b" * 100)], policy)
    headers = fields["req"]["headers"]
    assert headers["x-big"] == "a" * 100 + "...[truncated 4900 bytes]"
    assert headers["x-small"] == "b" * 100
    assert fields["trunc"] == ["req.headers.x-big"]


def test_truncation_never_splits_a_utf8_character() -> None:
    policy = clearing({"x-name"}, max_value_bytes=101)
    value = "é" * 200  # 2 bytes each: byte 101 is the middle of a character
    stored = capture([("x-name", value)], policy)["req"]["headers"]["x-name"]
    kept = stored.split("...[truncated")[0]
    assert kept == "é" * 50
    assert stored.endswith(f"...[truncated {400 - 100} bytes]")


def test_oversized_path_query_and_authority_are_truncated() -> None:
    policy = RedactionPolicy(max_value_bytes=64, query_mode="keep")
    msg = request_msg([], path="/" + "p" * 200 + "?" + "q=" + "v" * 200)
    msg.request_headers.headers.headers[2].raw_value = b"h" * 200 + b".example"
    fields = Capturer(policy).request(msg)
    assert sorted(fields["trunc"]) == ["req.authority", "req.path", "req.query"]
    for name in ("path", "query", "authority"):
        assert "...[truncated" in fields["req"][name]


def test_oversized_response_header_is_named_in_trunc() -> None:
    policy = clearing({"x-trace"}, max_value_bytes=64)
    fields = Capturer(policy, response_headers=None).response(
        response_msg("503", [("x-trace", "t" * 500)])
    )
    assert fields["trunc"] == ["resp.headers.x-trace"]
    assert fields["resp"]["status"] == 503


# "²00".isdigit() is True and int() takes it: it once raised INTERNAL with a
# traceback per stream. A status is three ASCII digits, 100-999.
@pytest.mark.parametrize("status", ["abc", "20x", "²00", "２00", " 20", "099", "1000", "-20"])
def test_unparseable_status_is_stored_as_data_not_an_exception(status: str) -> None:
    resp = Capturer(RedactionPolicy()).response(response_msg(status))["resp"]
    assert resp["status"] is None and resp["status_raw"] == status


def test_missing_status_is_null_without_raw() -> None:
    assert Capturer(RedactionPolicy()).response(response_msg(""))["resp"] == {
        "status": None,
        "headers": {},
    }


def test_repeated_headers_are_one_value_joined_in_order() -> None:
    fields = capture(
        [
            ("x-forwarded-for", "10.0.0.1"),
            ("accept", "*/*"),
            ("X-Forwarded-For", "10.0.0.2"),
        ]
    )
    assert fields["req"]["headers"]["x-forwarded-for"] == "10.0.0.1,10.0.0.2"
    assert fields["req"]["headers"]["accept"] == "*/*"
    binary = capture([("x-forwarded-for", "10.0.0.1"), ("x-forwarded-for", b"\xff")])
    assert binary["req"]["headers"]["x-forwarded-for"] == {"b64": "MTAuMC4wLjEs/w=="}


# --- identities and Envoy attributes --------------------------------------------------------


XFCC_CASES = [
    ("By=spiffe://cluster.local/ns/b/sa/api;Hash=ab12;URI=spiffe://cluster.local/ns/a/sa/web",
     "spiffe://cluster.local/ns/a/sa/web"),
    ("URI=spiffe://hop/one,By=x;URI=spiffe://hop/two", "spiffe://hop/two"),
    ('Subject="CN=web,O=Example, Inc";URI="spiffe://quoted/id"', "spiffe://quoted/id"),
    ('Hash=ab;Subject="a;URI=spiffe://inside-quotes"', None),
]  # fmt: skip


@pytest.mark.parametrize(("xfcc", "principal"), XFCC_CASES)
def test_xfcc_uri_becomes_source_principal(xfcc: str, principal: str | None) -> None:
    fields = capture([("x-forwarded-client-cert", xfcc)])
    assert fields["src"].get("principal") == principal


def test_xfcc_uris_in_hop_order() -> None:
    assert xfcc_uris("URI=a,URI=b;By=c,Hash=d") == ["a", "b"]


def test_mtls_attribute_wins_over_xfcc_header() -> None:
    fields = capture(
        [("x-forwarded-client-cert", "URI=spiffe://claimed/by-header")],
        attributes={"connection.uri_san_peer_certificate": "spiffe://cluster.local/ns/a/sa/real"},
    )
    assert fields["src"]["principal"] == "spiffe://cluster.local/ns/a/sa/real"
    assert fields["src"]["from"]["principal"] == "attribute:connection.uri_san_peer_certificate"


def test_principal_from_xfcc_says_it_came_from_a_header() -> None:
    fields = capture([("x-forwarded-client-cert", "By=spiffe://b;URI=spiffe://claimed")])
    assert fields["src"]["principal"] == "spiffe://claimed"
    assert fields["src"]["from"] == {"principal": "header:x-forwarded-client-cert"}


def test_made_up_source_principal_attribute_is_ignored() -> None:
    # `source.principal` is not an Envoy attribute: only a forger sends it.
    fields = capture([], attributes={"source.principal": "spiffe://cluster.local/ns/admin/sa/ceo"})
    assert "principal" not in fields["src"]
    assert b"ceo" not in sealed(fields)


def test_local_certificate_names_the_destination() -> None:
    fields = capture(
        [],
        attributes={"connection.uri_san_local_certificate": "spiffe://cluster.local/ns/b/sa/api"},
    )
    # What the reporter says it served the request as: a claim, beside the reporter.
    assert fields["reporter"]["claimed"] == {"dst_principal": "spiffe://cluster.local/ns/b/sa/api"}
    assert "dst_principal" not in fields


def test_envoy_attributes_are_mapped() -> None:
    fields = capture(
        [("x-request-id", "header-rid")],
        attributes={
            "source.address": "10.1.2.3:51234",
            "destination.address": "10.9.8.7:8080",
            "request.id": "attr-rid-1",
            "request.protocol": "HTTP/2",
            "xds.node.id": "sidecar~10.9.8.7~web-0.default~default.svc.cluster.local",
            "connection.uri_san_peer_certificate": "spiffe://cluster.local/ns/a/sa/web",
            "some.other": 42,
        },
    )
    assert fields["src"] == {
        "address": "10.1.2.3:51234",
        "san": "spiffe://cluster.local/ns/a/sa/web",
        "principal": "spiffe://cluster.local/ns/a/sa/web",
        "from": {
            "address": "attribute:source.address",
            "san": "attribute:connection.uri_san_peer_certificate",
            "principal": "attribute:connection.uri_san_peer_certificate",
        },
    }
    assert fields["dst"] == "10.9.8.7:8080"
    assert fields["rid"] == "attr-rid-1"
    assert fields["req"]["protocol"] == "HTTP/2"
    assert fields["reporter"]["claimed"] == {
        "node": "sidecar~10.9.8.7~web-0.default~default.svc.cluster.local"
    }
    assert b"some.other" not in sealed(fields)


def test_request_id_falls_back_to_header() -> None:
    assert capture([("x-request-id", "hdr-1")])["rid"] == "hdr-1"
    assert capture([])["rid"] == ""
    assert capture([("x-request-id", "a"), ("x-request-id", "b")])["rid"] == "a,b"


def test_missing_attributes_leave_fields_absent() -> None:
    fields = capture([])
    assert fields["src"] == {}
    assert "dst" not in fields and "protocol" not in fields["req"]
    assert "claimed" not in fields["reporter"]


# --- the entry size limit --------------------------------------------------------------------


def _many_headers(count: int, size: int, prefix: str = "x-h") -> list[Header]:
    return [(f"{prefix}{i:03d}", chr(ord("a") + i % 26) * size) for i in range(count)]


# The test headers above, stored in clear: the size limits are about values as sent.
MANY = frozenset(f"{p}{i:03d}" for p in ("x-h", "x-r") for i in range(100))


@pytest.mark.parametrize("max_value_bytes", [2048, 16 * 1024], ids=["default-cut", "no-cut"])
def test_entry_fits_limit_with_100_headers_of_8kib(max_value_bytes: int) -> None:
    policy = clearing(MANY, max_value_bytes=max_value_bytes)
    # 800 KiB of headers: past Envoy's default, so only with a raised byte bound.
    capturer = Capturer(policy, max_header_bytes=1 << 20)
    fields = capturer.request(request_msg(_many_headers(100, 8 * 1024)))
    encoded = sealed(fields)
    assert len(encoded) <= entry.MAX_ENTRY_BYTES
    dropped = [n for n, v in fields["req"]["headers"].items() if v == entry.DROPPED]
    assert dropped
    for name in dropped:
        assert f"req.headers.{name}" in fields["trunc"]
    entry.parse(encoded)


def test_exchange_entry_fits_limit_with_big_request_and_response() -> None:
    # Observe mode: one entry carries both halves.
    capturer = Capturer(clearing(MANY), response_headers=None, max_header_bytes=1 << 20)
    fields = capturer.request(request_msg(_many_headers(100, 8 * 1024)))
    response = capturer.response(response_msg("200", _many_headers(100, 8 * 1024, "x-r")))
    fields.setdefault("trunc", []).extend(response.pop("trunc"))
    fields.update(response)
    encoded = sealed(fields)
    assert len(encoded) <= entry.MAX_ENTRY_BYTES
    assert any(p.startswith("resp.headers.") for p in fields["trunc"])


def test_entry_fits_limit_with_hostile_request_id() -> None:
    # Envoy's request.id is the client's x-request-id on internal traffic.
    huge = "r" * 200_000
    fields = capture([("x-request-id", huge)], attributes={"request.id": huge})
    assert len(sealed(fields)) <= entry.MAX_ENTRY_BYTES
    assert "rid" in fields["trunc"]


def test_huge_header_names_are_counted_not_stored() -> None:
    # Within Envoy's default 60 KiB per header block, but names no client needs.
    def big_names(prefix: str) -> list[Header]:
        return [(f"{prefix}{i}-" + "n" * 8 * 1024, "v") for i in range(7)]

    capturer = Capturer(RedactionPolicy(), response_headers=None)
    fields = capturer.request(request_msg(big_names("x-q")))
    fields.update(capturer.response(response_msg("200", big_names("x-r"))))
    assert fields["req"]["headers"] == {} and fields["req"]["headers_omitted"] == 7
    assert fields["resp"]["headers_omitted"] == 7
    assert fields["trunc"] == ["resp.headers.*"]  # the response's list replaced the request's
    assert len(sealed(fields)) < 4096


def test_entry_fits_limit_with_long_header_names() -> None:
    # Both halves of an observe-mode exchange together: the names alone exceed the limit.
    def big_names(prefix: str) -> list[Header]:
        return [(f"{prefix}{i}-" + "n" * 1000, "v" * 4000) for i in range(20)]

    names = {f"{p}{i}-" + "n" * 1000 for p in ("x-q", "x-r") for i in range(20)}
    capturer = Capturer(clearing(names), response_headers=None)
    fields = capturer.request(request_msg(big_names("x-q")))
    fields.update(capturer.response(response_msg("200", big_names("x-r"))))
    assert len(sealed(fields)) <= entry.MAX_ENTRY_BYTES
    assert fields["req"]["headers"] == {} or fields["resp"]["headers"] == {}
    assert len(fields["trunc"]) <= 4


def test_small_entry_is_not_touched_by_fit() -> None:
    fields = capture([("accept", "*/*")])
    before = entry.encode(fields)
    assert entry.encode(entry.fit(fields)) == before
    assert "trunc" not in fields


# --- the whole picture: no secret byte anywhere -----------------------------------------------


SECRETS = {
    "authorization": "Bearer SECRET-bearer-0001",
    "proxy-authorization": "Basic SECRET-proxy-0002",
    "cookie": "session=SECRET-cookie-0003; csrf=SECRET-csrf-0004",
    "x-api-key": "SECRET-apikey-0005",
    "x-auth-token": "SECRET-auth-0006",
    "x-amz-security-token": "SECRET-amz-0007",
    "x-custom-secret": "SECRET-custom-0008",
}


@pytest.mark.parametrize("hmac_key", [None, b"K" * 32], ids=["marker", "hmac"])
def test_secrets_never_appear_in_encoded_entry(hmac_key: bytes | None) -> None:
    capturer = Capturer(RedactionPolicy(hmac_key=hmac_key))
    headers: list[Header] = list(SECRETS.items())
    headers += [("authorization", "Bearer SECRET-second-0009"), ("cookie", "x=SECRET-again-0010")]
    fields = capturer.request(
        request_msg(
            headers + _many_headers(30, 4000),
            path="/login?user=bob&password=SECRET-pw-0011&access_token=SECRET-at-0012",
        )
    )
    response = capturer.response(
        response_msg("302", [("set-cookie", "session=SECRET-setcookie-0013; HttpOnly")])
    )
    fields.setdefault("trunc", []).extend(response.pop("trunc", []))
    fields.update(response)
    encoded = sealed(fields)
    assert b"SECRET" not in encoded
    if hmac_key is not None:
        assert hmac_key not in encoded
    # The non-secret context survived.
    assert b"Bearer " in encoded and b"session=" in encoded and b"user=" in encoded


def test_default_response_capture_keeps_status_and_listed_headers_only() -> None:
    msg = response_msg(
        "302",
        [("location", "/login"), ("x-internal-trace", "abc"), ("set-cookie", "sid=SECRET; Path=/")],
    )
    resp = Capturer(RedactionPolicy()).response(msg)["resp"]
    assert resp["status"] == 302
    assert resp["headers"] == {"location": "/login", "set-cookie": "sid=[redacted]"}
    everything = Capturer(RedactionPolicy(), response_headers=None).response(msg)["resp"]
    assert everything["headers"]["x-internal-trace"] == REDACTED  # kept, as its hash


# --- bounded cost per message (a hostile reporter, docs/THREATS.md) ---------------------------


def test_header_count_past_the_bound_is_counted_not_stored() -> None:
    # 12,000 headers stalled the event loop for 8 s before the bound existed.
    fields = capture(_many_headers(12_000, 20))
    headers = fields["req"]["headers"]
    assert len(headers) <= DEFAULT_MAX_HEADERS
    assert fields["req"]["headers_omitted"] == 12_000 + 4 - DEFAULT_MAX_HEADERS
    assert "req.headers.*" in fields["trunc"]
    assert len(sealed(fields)) <= entry.MAX_ENTRY_BYTES


def test_header_bytes_past_the_bound_are_counted_not_stored() -> None:
    capturer = Capturer(RedactionPolicy(), max_header_bytes=10_000)
    fields = capturer.request(request_msg(_many_headers(10, 3000)))
    assert len(fields["req"]["headers"]) == 3  # the pseudo-headers fit too
    assert fields["req"]["headers_omitted"] == 7


def test_mixed_case_credential_header_is_redacted() -> None:
    # Envoy lower-cases names; a forger talking to the gRPC port does not.
    fields = capture([("Authorization", "Bearer s3cr3t-token"), ("X-API-KEY", "k3y-value")])
    assert fields["req"]["headers"]["authorization"] == f"Bearer {REDACTED}"
    assert fields["req"]["headers"]["x-api-key"] == REDACTED
    assert b"s3cr3t" not in sealed(fields) and b"k3y-value" not in sealed(fields)


def test_attribute_stuffing_costs_only_the_attributes_asked_for() -> None:
    stuffed: dict[str, Any] = {f"junk.{i}": "x" * 10 for i in range(20_000)}
    stuffed["source.address"] = "10.0.0.1:1"
    fields = capture([], attributes=stuffed)
    assert fields["src"]["address"] == "10.0.0.1:1"
    assert b"junk" not in sealed(fields)


def test_fit_drops_only_as_much_as_needed() -> None:
    capturer = Capturer(clearing(MANY, max_value_bytes=8192), max_header_bytes=1 << 20)
    fields = capturer.request(request_msg(_many_headers(40, 2500)))
    sealed_bytes = sealed(fields)
    assert len(sealed_bytes) <= entry.MAX_ENTRY_BYTES
    dropped = [n for n, v in fields["req"]["headers"].items() if v == entry.DROPPED]
    # 100 KiB of headers against a ~62 KiB target: about 15 must go, not all 40.
    assert 10 <= len(dropped) <= 20


# --- the fast path stores what the policy says --------------------------------------------
# Capture skips policy.header() for names it has no work for and policy.truncate()
# for values short enough to fit whatever their characters. These properties hold
# it to the plain reading: every stored header is policy.truncate(policy.header(v)).

_ODD_NAMES = [
    "Authorization",
    "COOKIE",
    "referer",
    "Location",
    "x-plain",
    "accept",
    "x-é",
    "\u212aeep-alive",
]
_NAMES = st.sampled_from(
    [*sorted(DEFAULT_CLEAR_HEADERS)[:12], *sorted(DEFAULT_URL_HEADERS), "set-cookie", *_ODD_NAMES]
)
_VALUES = st.one_of(
    st.text(max_size=40),
    st.text(min_size=15, max_size=90),  # around the 64-byte limit
    # Few characters, many bytes: the shortcut must count 4 bytes for each.
    st.text(st.characters(min_codepoint=0x800, exclude_categories=["Cs"]), min_size=8, max_size=40),
    st.sampled_from(["Bearer tok", "https://a/?code=S1#access_token=S2", "sid=s; x=y"]),
)


def _fitted(policy: RedactionPolicy, value: str) -> tuple[str, bool]:
    """policy.truncate() written out, without its shortcut."""
    encoded = value.encode("utf-8", "surrogatepass")
    if len(encoded) <= policy.max_value_bytes:
        return value, False
    kept = encoded[: policy.max_value_bytes].decode("utf-8", "ignore")
    return kept + TRUNCATED_MARK.format(len(encoded) - len(kept.encode())), True


def _plain(policy: RedactionPolicy, name: str, value: str) -> tuple[str, bool]:
    return _fitted(policy, policy.header(name, value))


@given(
    headers=st.lists(st.tuples(_NAMES, _VALUES), max_size=12),
    max_value_bytes=st.sampled_from([64, 65, 100, 2048]),
)
@settings(max_examples=300, deadline=None)
def test_ext_proc_headers_are_what_the_policy_makes_of_them(
    headers: list[tuple[str, str]], max_value_bytes: int
) -> None:
    policy = RedactionPolicy(max_value_bytes=max_value_bytes, hmac_key=HMAC_KEY)
    fields = capture(list(headers), policy)
    joined: dict[str, str] = {}
    for name, value in headers:
        lowered = ascii_lower(name)
        joined[lowered] = joined[lowered] + "," + value if lowered in joined else value
    expected: dict[str, Any] = {}
    cut_names = set()
    for name, value in joined.items():
        expected[name], cut = _plain(policy, name, value)
        if cut:
            cut_names.add(f"req.headers.{name}")
    assert fields["req"]["headers"] == expected
    assert cut_names == {t for t in fields.get("trunc", []) if t.startswith("req.headers.")}


@given(path=_VALUES, max_value_bytes=st.sampled_from([64, 100]))
@settings(max_examples=200, deadline=None)
def test_ext_proc_request_line_is_truncated_as_the_policy_says(
    path: str, max_value_bytes: int
) -> None:
    policy = RedactionPolicy(max_value_bytes=max_value_bytes, query_mode="keep")
    target = "/" + path.replace("?", "").replace("#", "")
    fields = capture([], policy, path=target)
    stored, cut = _fitted(policy, policy.target(target, request=True)[0])
    assert fields["req"]["path"] == stored
    assert cut == ("req.path" in fields.get("trunc", []))
