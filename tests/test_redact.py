"""Redaction policy (extproc/core/redact.py): the gaps a security review found,
and properties saying a secret in a credential-bearing position never reaches
the stored entry, in any encoding.

Rows are named after the attack. The entry-level tests run real ext_proc
protobufs through the Capturer, as Envoy (or a forger on the gRPC port) sends them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from extproc.core import entry
from extproc.core.redact import (
    DEFAULT_REDACT_HEADERS,
    DEFAULT_REDACT_QUERY_PARAMS,
    DEFAULT_URL_HEADERS,
    QUERY_MODES,
    REDACTED,
    RedactionPolicy,
)
from extproc.server.capture import Capturer

HMAC_KEY = b"test-hmac-key-0123456789abcdef"
PROPERTY = settings(max_examples=300, deadline=None)


def hmac_of(value: str | bytes, key: bytes = HMAC_KEY) -> str:
    data = value.encode() if isinstance(value, str) else value
    return "hmac-sha256:" + hmac.new(key, data, hashlib.sha256).hexdigest()


# --- the review's findings, one row each ----------------------------------------------------


URL_HEADER_ATTACKS = [
    pytest.param(
        "location",
        "https://client/cb?code=S1#access_token=S2",
        "https://client/cb?code=[redacted]#access_token=[redacted]",
        id="location-code-and-fragment-token",
    ),
    pytest.param(
        "referer",
        "https://app/?access_token=S3",
        "https://app/?access_token=[redacted]",
        id="referer-query-token",
    ),
    pytest.param(
        "content-location",
        "/reports/1?sig=abc&page=2",
        "/reports/1?sig=[redacted]&page=2",
        id="content-location-relative-signature",
    ),
    pytest.param(
        "location",
        "https://client/cb#access_token=S2&token_type=bearer&id_token=S5&state=st1&expires_in=60",
        "https://client/cb#access_token=[redacted]&token_type=bearer&id_token=[redacted]"
        "&state=st1&expires_in=60",
        id="location-implicit-flow-fragment",
    ),
    pytest.param(
        "location",
        "https://client/cb#c2VjcmV0LXRva2Vu",
        "https://client/cb#[redacted]",
        id="location-opaque-fragment",
    ),
    pytest.param(
        "location",
        "https://client/cb#dG9rZW4=",
        "https://client/cb#[redacted]",
        id="location-padded-base64-fragment-is-opaque",
    ),
    pytest.param(
        "location",
        "https://spa/#/callback?access_token=S6",
        "https://spa/#[redacted]",
        id="location-hash-route-fragment-is-opaque",
    ),
    pytest.param(
        "location",
        "/cb?code=S7",
        "/cb?code=[redacted]",
        id="location-relative",
    ),
    pytest.param(
        "location",
        "//client/cb?CODE=S7;state=x",
        "//client/cb?CODE=[redacted];[redacted]",
        id="location-scheme-relative-semicolon",
    ),
    pytest.param(
        "location",
        "https://user:hunter2@host/p?x=1",
        "https://user:[redacted]@host/p?x=1",
        id="location-userinfo-password",
    ),
    pytest.param(
        "referer",
        "https://ghp_TOKEN@github.com/org/repo",
        "https://[redacted]@github.com/org/repo",
        id="referer-userinfo-token",
    ),
    pytest.param(
        "x-envoy-original-path",
        "/v1/items?token=S8&page=2",
        "/v1/items?token=[redacted]&page=2",
        id="envoy-original-path-after-rewrite",
    ),
    pytest.param(
        "location",
        "https://client/cb?state=ok&next=/home",
        "https://client/cb?state=ok&next=/home",
        id="location-without-secrets-unchanged",
    ),
]


@pytest.mark.parametrize(("name", "value", "stored"), URL_HEADER_ATTACKS)
def test_location_header_fragment_token_redacted(name: str, value: str, stored: str) -> None:
    assert RedactionPolicy().header(name, value) == stored


QUERY_ATTACKS = [
    pytest.param("a=1;token=S4", "a=1;token=[redacted]", id="semicolon-separator"),
    pytest.param("a=1;token=S4&b=2", "a=1;token=[redacted]&b=2", id="semicolon-then-ampersand"),
    # A server splitting on & only reads "S4;b=2" as the token: the tail goes too.
    pytest.param("token=S4;b=2&c=3", "token=[redacted];[redacted]&c=3", id="semicolon-tail"),
    pytest.param("x_api_key=S9", "x_api_key=[redacted]", id="x_api_key"),
    pytest.param("client_assertion=eyJ.S10", "client_assertion=[redacted]", id="client_assertion"),
    pytest.param("X-Api-Key=S11", "X-Api-Key=[redacted]", id="x-api-key-mixed-case"),
    pytest.param("%78_api_key=S12", "%78_api_key=[redacted]", id="percent-encoded-name"),
    pytest.param("SAMLResponse=PHNhbWw", "SAMLResponse=[redacted]", id="saml-response"),
    pytest.param("oauth_verifier=v&oauth_token=t",
                 "oauth_verifier=[redacted]&oauth_token=[redacted]", id="oauth1"),
    pytest.param("token[]=S13&user[password]=S14", "token[]=[redacted]&user[password]=[redacted]",
                 id="array-and-nested-names"),
    pytest.param("x=1#access_token=S15", "x=1#access_token=[redacted]", id="fragment-in-path"),
    pytest.param("state=st&sv=2024-01-01&sas=1&sig=S16",
                 "state=st&sv=2024-01-01&sas=1&sig=[redacted]", id="state-and-sas-fields-stay"),
]  # fmt: skip


@pytest.mark.parametrize(("query", "stored"), QUERY_ATTACKS)
def test_semicolon_query_and_new_param_names_redacted(query: str, stored: str) -> None:
    assert RedactionPolicy().query(query) == stored


NEW_CREDENTIAL_HEADERS = [
    "x-vault-token", "x-goog-api-key", "x-csrf-token", "x-xsrf-token", "x-access-token",
    "x-refresh-token", "x-client-secret", "private-token", "x-functions-key",
    "ocp-apim-subscription-key", "x-api-token", "x-amz-security-token", "api-key", "apikey",
    "x-auth", "authentication",
]  # fmt: skip


@pytest.mark.parametrize("name", NEW_CREDENTIAL_HEADERS)
def test_vault_and_vendor_token_headers_redacted(name: str) -> None:
    assert name in DEFAULT_REDACT_HEADERS
    assert RedactionPolicy().header(name, "s.S3cr3tV4lue") == REDACTED


NEW_QUERY_PARAMS = [
    "client_secret", "client_assertion", "code", "refresh_token", "id_token", "x_api_key",
    "x-api-key", "api-key", "assertion", "saml", "samlresponse", "samlrequest", "otp",
    "passcode", "pin", "ticket", "auth_token", "oauth_token", "oauth_verifier", "private_token",
    "x-goog-signature", "x-goog-credential", "sig",
]  # fmt: skip


def test_default_lists_hold_the_reviewed_names() -> None:
    assert set(NEW_QUERY_PARAMS) <= DEFAULT_REDACT_QUERY_PARAMS
    assert not {"state", "sas", "sv"} & DEFAULT_REDACT_QUERY_PARAMS
    assert {"location", "referer", "content-location"} <= DEFAULT_URL_HEADERS
    assert not DEFAULT_URL_HEADERS & DEFAULT_REDACT_HEADERS


MIXED_CASE = [
    ("Authorization", "Bearer S17", "Bearer [redacted]"),
    ("AUTHORIZATION", "S17", REDACTED),
    ("Proxy-Authorization", "Basic dXNlcjpwdw==", "Basic [redacted]"),
    ("Cookie", "sid=S18; theme=dark", "sid=[redacted]; theme=[redacted]"),
    ("Set-Cookie", "sid=S18; Path=/", "sid=[redacted]"),
    ("X-Vault-Token", "S19", REDACTED),
    ("Location", "https://c/cb?code=S20", "https://c/cb?code=[redacted]"),
]


@pytest.mark.parametrize(("name", "value", "stored"), MIXED_CASE)
def test_mixed_case_authorization_header_redacted(name: str, value: str, stored: str) -> None:
    policy = RedactionPolicy()
    assert policy.header(name, value) == stored
    assert policy.header(name.lower(), value) == stored  # what capture passes


def test_configured_names_match_whatever_their_case() -> None:
    policy = RedactionPolicy(
        redact_headers=DEFAULT_REDACT_HEADERS | {"X-Tenant-Secret"},
        url_headers=DEFAULT_URL_HEADERS | {"X-Callback-Url"},
        redact_query_params=frozenset({"Tenant_PIN"}),
    )
    assert policy.header("x-tenant-secret", "pw") == REDACTED
    assert policy.header("x-callback-url", "https://c/?tenant_pin=1&a=2") == (
        "https://c/?tenant_pin=[redacted]&a=2"
    )
    assert policy.query("TENANT_PIN=1&token=kept") == "TENANT_PIN=[redacted]&token=kept"


def test_credential_header_wins_over_url_header() -> None:
    policy = RedactionPolicy(url_headers=DEFAULT_URL_HEADERS | {"authorization"})
    assert policy.header("authorization", "Bearer https://x/?a=1") == "Bearer [redacted]"


# --- query modes ------------------------------------------------------------------------------


URL = "https://u:pw@client/cb?code=S1&page=2;flag#access_token=S2&state=ok"
URL_MODES = {
    "sensitive": "https://u:[redacted]@client/cb?code=[redacted]&page=2;flag"
    "#access_token=[redacted]&state=ok",
    "all": "https://u:[redacted]@client/cb?code=[redacted]&page=[redacted];[redacted]"
    "#access_token=[redacted]&state=[redacted]",
    # The userinfo is a credential, not a query: redacted in every mode.
    "keep": "https://u:[redacted]@client/cb?code=S1&page=2;flag#access_token=S2&state=ok",
    "drop": "https://u:[redacted]@client/cb",
}
OPAQUE = "https://client/cb?x=1#c2VjcmV0"
OPAQUE_MODES = {
    "sensitive": "https://client/cb?x=1#[redacted]",
    "all": "https://client/cb?x=[redacted]#[redacted]",
    "keep": OPAQUE,
    "drop": "https://client/cb",
}
QUERY = "q=1;token=S4&Key=S5&flag"
QUERY_RESULTS = {
    "sensitive": "q=1;token=[redacted]&Key=[redacted]&flag",
    "all": "q=[redacted];[redacted]&Key=[redacted]&flag",
    "keep": QUERY,
    "drop": None,
}


@pytest.mark.parametrize("mode", QUERY_MODES)
def test_url_headers_follow_every_query_mode(mode: str) -> None:
    policy = RedactionPolicy(query_mode=mode)
    for name in sorted(DEFAULT_URL_HEADERS):
        assert policy.header(name, URL) == URL_MODES[mode]
        assert policy.header(name, OPAQUE) == OPAQUE_MODES[mode]
    assert policy.query(QUERY) == QUERY_RESULTS[mode]


# --- keyed hashes -----------------------------------------------------------------------------


def test_hmac_markers_in_url_headers_and_query() -> None:
    policy = RedactionPolicy(hmac_key=HMAC_KEY)
    location = policy.header("location", "https://c/cb?code=S1#access_token=tokA")
    referer = policy.header("referer", "https://app/?access_token=tokA")
    query = policy.query("a=1;access_token=tokA")
    assert location == f"https://c/cb?code={hmac_of('S1')}#access_token={hmac_of('tokA')}"
    # Equal secrets, equal markers, wherever they were.
    assert referer == f"https://app/?access_token={hmac_of('tokA')}"
    assert query == f"a=1;access_token={hmac_of('tokA')}"
    assert policy.header("x-vault-token", "tokA") == hmac_of("tokA")
    assert (
        policy.header("location", "https://c/#opaque-tok") == f"https://c/#{hmac_of('opaque-tok')}"
    )
    assert "tokA" not in location + referer + query


def test_hmac_differs_for_different_secrets_and_keys() -> None:
    one = RedactionPolicy(hmac_key=HMAC_KEY).header("location", "/cb?code=a")
    two = RedactionPolicy(hmac_key=HMAC_KEY).header("location", "/cb?code=b")
    other_key = RedactionPolicy(hmac_key=b"another-key-0123456789").header("location", "/cb?code=a")
    assert len({one, two, other_key}) == 3


# --- values that are not UTF-8 ------------------------------------------------------------------


def test_non_utf8_location_header_is_redacted_not_base64() -> None:
    policy = RedactionPolicy()
    raw = b"https://c/cb\xe9?code=S3cr3tC0de\xff&x=\xfe#access_token=T0k3nValue"
    stored = policy.header_bytes("Location", raw)
    assert stored == "https://c/cb%E9?code=[redacted]&x=%FE#access_token=[redacted]"
    keyed = RedactionPolicy(hmac_key=HMAC_KEY).header_bytes("location", raw)
    assert keyed is not None and hmac_of(b"S3cr3tC0de\xff") in keyed  # the HMAC of the raw bytes


def test_non_utf8_credential_is_one_marker_and_other_headers_are_left_to_capture() -> None:
    policy = RedactionPolicy(hmac_key=HMAC_KEY)
    assert policy.header_bytes("X-Vault-Token", b"s.\xfftoken") == hmac_of(b"s.\xfftoken")
    assert policy.header_bytes("x-legacy", b"caf\xe9") is None


# --- never raises, always encodable -------------------------------------------------------------


HEADER_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)


@PROPERTY
@given(
    name=st.sampled_from(sorted(DEFAULT_URL_HEADERS | DEFAULT_REDACT_HEADERS | {"x-other"})),
    value=HEADER_TEXT | st.from_regex(r"\A[a-z:/?#&;=@%\[\]\\.A-Z0-9]{0,60}\Z"),
    raw=st.binary(max_size=200),
    mode=st.sampled_from(QUERY_MODES),
)
def test_odd_input_never_raises_and_always_encodes(
    name: str, value: str, raw: bytes, mode: str
) -> None:
    policy = RedactionPolicy(query_mode=mode)
    out: dict[str, Any] = {
        "header": policy.header(name, value),
        "url": policy.url(value),
        "query": policy.query(value),
        "bytes": policy.header_bytes(name, raw),
    }
    entry.encode(out)  # orjson refuses lone surrogates: none may come out


# --- properties: a secret in a credential-bearing position never comes out ---------------------


SLOT = "\x00SECRET\x00"
SECRETS = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=8, max_size=40),
    st.text(st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp")), min_size=8, max_size=40),
).filter(lambda s: not s.isspace())
POLICIES = st.sampled_from([None, HMAC_KEY])
# Marker joins the redaction itself produces, for the "not fixed text" assumption.
MARKER_TEXT = " ".join(
    f"{m}{sep}{m}" for m in (REDACTED, "hmac-sha256:") for sep in ("; ", ";", "&", "#", "@", "=")
)


def forms(secret: str) -> list[str]:
    """The secret as the log could carry it: raw, percent-encoded, base64."""
    data = secret.encode()
    return [
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        base64.b64encode(data).decode(),
        base64.urlsafe_b64encode(data).decode(),
        base64.b64encode(data).decode().rstrip("="),
    ]


def assume_not_fixed(secret: str, *templates: str) -> None:
    """Skip secrets that are part of the text around them (or of a marker)."""
    fixed = " ".join(t.replace(SLOT, REDACTED) for t in templates) + MARKER_TEXT
    assume(not any(form in fixed for form in forms(secret)))


def assert_hidden(output: str | bytes | None, secret: str) -> None:
    if output is None:
        return
    if isinstance(output, str):
        for form in forms(secret):
            assert form not in output
        return
    for form in forms(secret):
        assert form.encode() not in output
        assert orjson.dumps(form)[1:-1] not in output  # as JSON escapes it


@st.composite
def any_case(draw: st.DrawFn, names: frozenset[str]) -> str:
    name = draw(st.sampled_from(sorted(names)))
    upper = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if u else c for c, u in zip(name, upper, strict=True))


@st.composite
def param_name(draw: st.DrawFn) -> str:
    """A default sensitive parameter name, in any case, maybe percent-encoded."""
    name = draw(any_case(DEFAULT_REDACT_QUERY_PARAMS))
    encoded = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(f"%{ord(c):02X}" if e else c for c, e in zip(name, encoded, strict=True))


def credential_templates(name: str) -> list[str]:
    lowered = name.lower()
    if lowered in ("authorization", "proxy-authorization"):
        return [f"Bearer {SLOT}", f"Basic {SLOT}", f"AWS4-HMAC-SHA256 {SLOT}", SLOT]
    if lowered == "cookie":
        return [f"theme=dark; sid={SLOT}; lang=en", f"sid={SLOT}", f"a=1;sid={SLOT}"]
    if lowered == "set-cookie":
        return [f"sid={SLOT}; Path=/; HttpOnly; Secure", f"sid={SLOT}"]
    return [SLOT]


def in_url(secret: str) -> list[str]:
    """How the secret sits in a URL: percent-encoded, or raw if it cannot split it."""
    values = [quote(secret, safe="")]
    if not set(secret) & set("&;#?=@/\\"):
        values.append(secret)
    return values


def url_templates(param: str, sep: str) -> list[str]:
    return [
        f"https://client.example/cb?state=ok{sep}{param}={SLOT}{sep}page=2#top",
        f"https://client.example/cb#{param}={SLOT}{sep}state=ok",
        f"https://client.example/cb?a=1#{SLOT}",
        f"/cb?{param}={SLOT}",
        f"//client.example/cb?x=1{sep}{param}={SLOT}",
        f"https://user:{SLOT}@client.example/cb",
        f"https://{SLOT}@client.example/cb",
    ]


@PROPERTY
@given(secret=SECRETS, name=any_case(DEFAULT_REDACT_HEADERS), key=POLICIES)
def test_credential_header_secret_never_stored(secret: str, name: str, key: bytes | None) -> None:
    policy = RedactionPolicy(hmac_key=key)
    templates = credential_templates(name)
    assume_not_fixed(secret, name, *templates)
    for template in templates:
        value = template.replace(SLOT, secret)
        assert_hidden(policy.header(name.lower(), value), secret)  # as capture calls it
        assert_hidden(policy.header(name, value), secret)
        assert_hidden(policy.header_bytes(name, value.encode()), secret)


@PROPERTY
@given(
    secret=SECRETS,
    param=param_name(),
    sep=st.sampled_from("&;"),
    mode=st.sampled_from(["sensitive", "all", "drop"]),
    key=POLICIES,
)
def test_query_param_secret_never_stored(
    secret: str, param: str, sep: str, mode: str, key: bytes | None
) -> None:
    policy = RedactionPolicy(query_mode=mode, hmac_key=key)
    template = f"q=shoes{sep}{param}={SLOT}{sep}page=2"
    assume_not_fixed(secret, template)
    for value in in_url(secret):
        assert_hidden(policy.query(template.replace(SLOT, value)), secret)


@PROPERTY
@given(
    secret=SECRETS,
    name=any_case(DEFAULT_URL_HEADERS),
    param=param_name(),
    sep=st.sampled_from("&;"),
    mode=st.sampled_from(["sensitive", "all", "drop"]),
    key=POLICIES,
)
def test_url_header_secret_never_stored(
    secret: str, name: str, param: str, sep: str, mode: str, key: bytes | None
) -> None:
    policy = RedactionPolicy(query_mode=mode, hmac_key=key)
    templates = url_templates(param, sep)
    assume_not_fixed(secret, *templates)
    for template in templates:
        for value in in_url(secret):
            text = template.replace(SLOT, value)
            assert_hidden(policy.header(name.lower(), text), secret)
            assert_hidden(policy.header_bytes(name, text.encode()), secret)


# --- the same at entry level: protobufs in, encoded entry out --------------------------------


Header = tuple[str, str | bytes]


def header_map(headers: Sequence[Header]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(
        headers=[
            base_pb2.HeaderValue(key=k, raw_value=v if isinstance(v, bytes) else v.encode())
            for k, v in headers
        ]
    )


def request_msg(path: str | bytes, headers: Sequence[Header]) -> pb.ProcessingRequest:
    pseudo: list[Header] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "api.example"),
        (":path", path),
    ]
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(headers=header_map([*pseudo, *headers]))
    )


def response_msg(headers: Sequence[Header]) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(headers=header_map([(":status", "302"), *headers]))
    )


def entry_bytes(policy: RedactionPolicy, request: Any, response: Any) -> bytes:
    """Request and response captured, then encoded as the appender stores them."""
    capturer = Capturer(policy)
    fields = capturer.request(request)
    resp = capturer.response(response)
    trunc = fields.pop("trunc", []) + resp.pop("trunc", [])
    fields.update(resp)
    fields.update(v=entry.FORMAT_VERSION, seq=1, prev="ab" * 32, ts="2026-01-01T00:00:00.000000Z")
    if trunc:
        fields["trunc"] = trunc
    return entry.encode(entry.fit(fields))


@PROPERTY
@given(
    secret=SECRETS,
    credential=any_case(DEFAULT_REDACT_HEADERS),
    url_header=any_case(DEFAULT_URL_HEADERS),
    location=any_case(frozenset({"location"})),
    set_cookie=any_case(frozenset({"set-cookie"})),
    param=param_name(),
    sep=st.sampled_from("&;"),
    template=st.integers(0, 6),
    key=POLICIES,
)
def test_entry_never_carries_the_secret(
    secret: str,
    credential: str,
    url_header: str,
    location: str,
    set_cookie: str,
    param: str,
    sep: str,
    template: int,
    key: bytes | None,
) -> None:
    policy = RedactionPolicy(hmac_key=key)
    url = url_templates(param, sep)[template]
    credential_value = credential_templates(credential)[0]
    path = f"/api/items?q=1{sep}{param}={SLOT}{sep}page=2"
    cookie = f"sid={SLOT}; Path=/"
    fixed = [credential, url_header, location, set_cookie, url, credential_value, path, cookie]
    assume_not_fixed(secret, *fixed, "/api/items", "api.example", "https", "GET")
    for value in in_url(secret):

        def put(template: str, value: str = value) -> str:
            return template.replace(SLOT, value)

        request = request_msg(
            put(path),
            [
                (credential, credential_value.replace(SLOT, secret)),
                (url_header, put(url)),
                ("user-agent", "curl/8.5"),
            ],
        )
        response = response_msg([(location, put(url)), (set_cookie, cookie.replace(SLOT, secret))])
        assert_hidden(entry_bytes(policy, request, response), secret)


NON_UTF8_URLS = [
    pytest.param("referer", b"https://app/\xe9?access_token=S3cr3tT0ken\xff", id="referer"),
    pytest.param("Location", b"https://c/cb?code=S3cr3tC0de#access_token=S3cr3tT0ken\xfe",
                 id="location-mixed-case"),
    pytest.param("x-envoy-original-path", b"/v1?token=S3cr3tT0ken&x=\xff",
                 id="envoy-original-path"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "raw"), NON_UTF8_URLS)
def test_non_utf8_url_header_never_reaches_entry_as_base64(name: str, raw: bytes) -> None:
    # Needs capture.py to pass non-UTF-8 values through policy.header_bytes().
    request = request_msg("/x", [(name, raw)] if name.lower() != "location" else [])
    response = response_msg([(name, raw)] if name.lower() == "location" else [])
    encoded = entry_bytes(RedactionPolicy(), request, response)
    for secret in (b"S3cr3tT0ken", b"S3cr3tC0de", base64.b64encode(raw)):
        assert secret not in encoded
    assert b"[redacted]" in encoded


def test_non_utf8_mixed_case_credential_never_reaches_entry() -> None:
    # Needs capture.py to lower-case header names (or to call policy.header_bytes()).
    raw = b"Bearer S3cr3t\xffT0ken"
    request = request_msg("/x", [("Authorization", raw)])
    encoded = entry_bytes(RedactionPolicy(), request, response_msg([]))
    for secret in (b"S3cr3t", base64.b64encode(raw)):
        assert secret not in encoded
