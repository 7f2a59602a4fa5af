"""Fuzz the captures with untrusted messages: ext_proc ProcessingRequests and
access-log HTTPAccessLogEntries, with arbitrary header names and value bytes,
attributes and request properties (tests/budget.py).

Each input may fail only with our own errors, within a memory and CPU budget,
and no generated value under a name that is not allowed appears in the entry.
(The access-log servicer's intake of whole messages is fuzzed with the
access-log budgets, tests of i16-als.)
"""

from __future__ import annotations

import base64
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2  # type: ignore[import-untyped]
from hypothesis import assume, given
from hypothesis import strategies as st

from extproc.attributes import ATTR_NAMESPACE, REQUEST_ATTRIBUTES
from extproc.core import entry
from extproc.core.redact import DEFAULT_CLEAR_PARAMS, RedactionPolicy
from extproc.server.access import AccessCapture
from extproc.server.capture import Capturer
from extproc.trust.reporter import ReporterRefused
from tests.budget import FUZZ, MIB, within_budget

POLICY = RedactionPolicy(hmac_key=b"fuzz-key-0123456789abcdef")
NAMES = st.one_of(
    st.text(max_size=40),
    st.sampled_from([":path", ":status", ":method", "Cookie", "referer", "x-api-key", "accept"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1000, max_size=1100),
)
RAW = st.binary(max_size=300)
ATTRIBUTE_VALUES = st.one_of(
    st.text(max_size=200), st.floats(allow_nan=True), st.booleans(), st.none()
)
# A marker that is only ever a value: if it shows in an entry, a value leaked.
LEAK = b"Lk9q"


def _not_allowed(name: str) -> bool:
    lowered = name.lower() if name.isascii() else name
    return not lowered.startswith(":") and POLICY.kind(lowered) is None


@st.composite
def processing_request(draw: st.DrawFn) -> tuple[pb.ProcessingRequest, bytes]:
    headers = draw(st.lists(st.tuples(NAMES, RAW), max_size=40))
    secret = LEAK + draw(st.binary(min_size=4, max_size=12)).hex().encode()
    name = draw(st.text(st.characters(min_codepoint=0x61, max_codepoint=0x7A), min_size=3))
    assume(_not_allowed("x-" + name))
    headers.append(("x-" + name, secret))
    kind = draw(st.sampled_from(["request_headers", "response_headers"]))
    header_map = base_pb2.HeaderMap(
        headers=[
            base_pb2.HeaderValue(key=k, raw_value=v, value=draw(st.text(max_size=20)))
            for k, v in headers
        ]
    )
    msg = pb.ProcessingRequest(**{kind: pb.HttpHeaders(headers=header_map)})
    attributes = draw(
        st.dictionaries(
            st.sampled_from(REQUEST_ATTRIBUTES) | st.text(max_size=10), ATTRIBUTE_VALUES
        )
    )
    if attributes:
        attrs = struct_pb2.Struct()
        attrs.update(attributes)
        msg.attributes[ATTR_NAMESPACE].CopyFrom(attrs)
    return msg, secret


def _assert_no_leak(fields: dict[str, Any], secret: bytes) -> None:
    encoded = entry.encode(entry.fit(dict(fields, v=1, seq=0, prev="")))
    assert len(encoded) <= entry.MAX_ENTRY_BYTES
    for form in (secret, base64.b64encode(secret)[:12]):
        assert form not in encoded


@FUZZ
@given(case=processing_request())
def test_ext_proc_capture_fuzz(case: tuple[pb.ProcessingRequest, bytes]) -> None:
    msg, secret = case
    capturer = Capturer(POLICY, response_headers=None)
    with within_budget(memory=4 * MIB, cpu=0.5):
        if msg.HasField("request_headers"):
            fields = capturer.request(msg)
        else:
            fields = capturer.response(msg)
    _assert_no_leak(fields, secret)


@st.composite
def access_entry(draw: st.DrawFn) -> tuple[al.HTTPAccessLogEntry, bytes]:
    secret = (LEAK + draw(st.binary(min_size=4, max_size=12)).hex().encode()).decode()
    name = draw(st.text(st.characters(min_codepoint=0x61, max_codepoint=0x7A), min_size=3))
    assume(_not_allowed("x-" + name) and name not in DEFAULT_CLEAR_PARAMS)
    text = st.text(max_size=200)
    request = al.HTTPRequestProperties(
        request_method=draw(st.integers(0, 12)),
        scheme=draw(text),
        authority=draw(text),
        path=draw(text | st.just(f"/p;{name}={secret}?{name}={secret}#{secret}")),
        user_agent=draw(text),
        referer=draw(text | st.just(f"https://{secret}@h/p?{name}={secret}")),
        forwarded_for=draw(text),
        request_id=draw(text),
        original_path=draw(text),
    )
    request.request_headers.update(draw(st.dictionaries(NAMES, text, max_size=30)))
    request.request_headers["x-" + name] = secret
    response = al.HTTPResponseProperties(response_code_details=draw(text))
    if draw(st.booleans()):
        response.response_code.value = draw(st.integers(0, 2**32 - 1))
    response.response_headers.update(draw(st.dictionaries(NAMES, text, max_size=30)))
    common = al.AccessLogCommon(
        upstream_cluster=draw(text),
        route_name=draw(text),
        intermediate_log_entry=draw(st.booleans()),
    )
    if draw(st.booleans()):
        cert = al.TLSProperties.CertificateProperties(
            subject_alt_name=[al.TLSProperties.CertificateProperties.SubjectAltName(uri=draw(text))]
        )
        common.tls_properties.CopyFrom(
            al.TLSProperties(peer_certificate_properties=cert, local_certificate_properties=cert)
        )
    e = al.HTTPAccessLogEntry(
        common_properties=common,
        request=request,
        response=response,
        protocol_version=draw(st.integers(0, 5)),
    )
    return e, secret.encode()


@FUZZ
@given(case=access_entry())
def test_access_log_capture_fuzz(case: tuple[al.HTTPAccessLogEntry, bytes]) -> None:
    e, secret = case
    capture = AccessCapture(POLICY)
    with within_budget(memory=4 * MIB, cpu=0.5, allowed=(ReporterRefused,)):
        fields = capture.fields(e)
    _assert_no_leak(fields, secret)
