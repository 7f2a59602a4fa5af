"""One entry builder (extproc/server/builder.py): the ext_proc capture and the
access-log capture store the same header identically.

The differential test runs the same requests through real Envoy with both
captures on (ext_proc with the response phase, and the access log logging
the same headers), and compares every header both carry: same name, same
stored value or hash, same truncation marks. The unit properties hold the
two capture paths to each other on generated header maps, bounds included.
"""

from __future__ import annotations

import http.client
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.attributes import ATTR_NAMESPACE, LOCAL_SAN
from extproc.core.redact import DEFAULT_CLEAR_HEADERS, DEFAULT_URL_HEADERS, RedactionPolicy
from extproc.hashkey import write_hash_key
from extproc.server.access import AccessCapture
from extproc.server.builder import MAX_HEADER_NAME_BYTES, Claims, byte_size
from extproc.server.capture import Capturer
from extproc.trust.policy import ReporterPolicy
from extproc.trust.reporter import AUTH_MTLS, Reporter, ReporterRefused
from tests.conftest import read_entries

HMAC_KEY = b"builder-test-key-0123456789"


def ext_proc_headers(
    capturer: Capturer, pairs: list[tuple[str, str]]
) -> tuple[dict[str, Any], int, list[str]]:
    trunc: list[str] = []
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
    )
    h = capturer.headers(header_map, "req", trunc)
    return h.stored, h.omitted, trunc


def access_entry(pairs: list[tuple[str, str]]) -> al.HTTPAccessLogEntry:
    e = al.HTTPAccessLogEntry()
    e.request.request_headers.update(dict(pairs))
    return e


def access_headers(
    capture: AccessCapture, pairs: list[tuple[str, str]] | al.HTTPAccessLogEntry
) -> tuple[dict[str, Any], int, list[str]]:
    fields = capture.fields(access_entry(pairs) if isinstance(pairs, list) else pairs)
    req = fields["req"]
    trunc = [t for t in fields.get("trunc", []) if t.startswith("req.headers")]
    return req["headers"], req.get("headers_omitted", 0), trunc


NAMES = st.one_of(
    st.sampled_from(sorted(DEFAULT_CLEAR_HEADERS)[:20] + sorted(DEFAULT_URL_HEADERS)),
    st.sampled_from(["authorization", "cookie", "set-cookie", "x-api-key", "x-other"]),
    st.from_regex(r"\A[a-z][a-z0-9-]{0,40}\Z"),
    st.just("x-" + "n" * (MAX_HEADER_NAME_BYTES + 1)),
)
VALUES = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120),
    st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=60),
    st.sampled_from(["Bearer t0k", "https://u:p@h/p;s=1?page=2&code=c#f", "a=1; b=2"]),
)


@given(
    headers=st.dictionaries(NAMES, VALUES, max_size=30),
    max_headers=st.sampled_from([8, 12, 256]),
    max_header_bytes=st.sampled_from([4096, 1 << 20]),
    max_value_bytes=st.sampled_from([64, 2048]),
)
@settings(max_examples=300, deadline=None)
def test_both_captures_store_a_header_map_identically(
    headers: dict[str, str], max_headers: int, max_header_bytes: int, max_value_bytes: int
) -> None:
    # Bounds counted the same way (bytes, before work), names capped in both,
    # the same redaction and truncation: the same map, the same marks.
    policy = RedactionPolicy(hmac_key=HMAC_KEY, max_value_bytes=max_value_bytes)
    bounds: dict[str, Any] = {"max_headers": max_headers, "max_header_bytes": max_header_bytes}
    e = access_entry(list(headers.items()))
    pairs = [(k, headers[k]) for k in e.request.request_headers]  # in the map's own order
    ext = ext_proc_headers(Capturer(policy, **bounds), pairs)
    als = access_headers(AccessCapture(policy, **bounds), e)
    assert ext == als


def test_budgets_count_bytes_not_characters() -> None:
    assert byte_size("é" * 10) == 20 and byte_size(b"\xc3\xa9") == 2 and byte_size("ab") == 2
    policy = RedactionPolicy()
    pairs = [("accept", "é" * 2045)]  # 2,045 characters, 4,096 bytes with the name
    for stored, omitted, _ in (
        ext_proc_headers(Capturer(policy, max_header_bytes=4095), pairs),
        access_headers(AccessCapture(policy, max_header_bytes=4095), pairs),
    ):
        assert stored == {} and omitted == 1


def test_long_header_names_are_capped_by_both_captures() -> None:
    policy = RedactionPolicy()
    pairs = [("x-" + "n" * MAX_HEADER_NAME_BYTES, "v"), ("accept", "*/*")]
    for stored, omitted, trunc in (
        ext_proc_headers(Capturer(policy), pairs),
        access_headers(AccessCapture(policy), pairs),
    ):
        assert stored == {"accept": "*/*"} and omitted == 1 and trunc == ["req.headers.*"]


def test_pseudo_headers_in_an_access_log_map_are_not_stored_as_headers() -> None:
    # Envoy logs `:path` if asked to: with its query, which req.query redacts.
    stored, _, _ = access_headers(
        AccessCapture(RedactionPolicy()), [(":path", "/p?token=S1"), ("accept", "a")]
    )
    assert stored == {"accept": "a"}


# --- real Envoy, both captures on ---------------------------------------------------------------


LOGGED = sorted(
    {"accept", "user-agent", "referer", "cookie", "authorization", "x-api-key", "x-rep",
     "x-long", "origin", "content-type", "x-forwarded-proto", "x-request-id", "x-weird_name"}
)  # fmt: skip
RESPONSE_LOGGED = ["content-type", "content-length", "set-cookie", "x-envoy-upstream-service-time"]
REQUESTS: list[tuple[str, list[tuple[str, str]]]] = [
    ("/api/items?page=2&token=S1", [("authorization", "Bearer S2"), ("accept", "text/html")]),
    ("/cart;jsessionid=S3/x?sort=asc", [("referer", "https://a.example/p;s=S4?q=S5&page=1")]),
    ("/r", [("x-rep", "one"), ("x-rep", "two"), ("cookie", "a=1"), ("cookie", "b=2")]),
    ("/long", [("x-long", "L" * 300), ("user-agent", "U" * 200), ("x-api-key", "K" * 500)]),
    ("/o", [("origin", "https://app.example"), ("x-weird_name", "v"), ("content-type", "a/b")]),
]


def patch_envoy(config: dict[str, Any]) -> None:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    als = hcm["typed_config"]["access_log"][0]["typed_config"]
    als["additional_request_headers_to_log"] = LOGGED
    als["additional_response_headers_to_log"] = RESPONSE_LOGGED


def _send(port: int, path: str, headers: list[tuple[str, str]]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        conn.getresponse().read()
    finally:
        conn.close()


def _both(side: dict[str, Any], other: dict[str, Any], section: str) -> dict[str, Any]:
    mine = side[section]["headers"]
    return {n: mine[n] for n in mine if n in other[section]["headers"]}


def _marks(e: dict[str, Any], section: str, names: set[str]) -> set[str]:
    return {t for t in e.get("trunc", []) if t.removeprefix(f"{section}.headers.") in names}


@pytest.mark.envoy
def test_envoy_differential_both_captures_store_the_same_headers(
    make_stack: Any, tmp_path: Path
) -> None:
    key = tmp_path / "hash.key"
    write_hash_key(key)
    stack = make_stack(
        extra_args=[
            "--hash-key", str(key), "--ext-proc-responses", "--response-headers", "*",
            "--max-value-bytes", "128",
        ],
        envoy_patch=patch_envoy,
    ).start()  # fmt: skip
    for path, headers in REQUESTS:
        _send(stack.envoy_port, path, headers)
    assert stack.stop_server() == 0, stack.server_log()
    entries = read_entries(stack.store_url, stack.log_id)
    by_rid: dict[str, dict[str, dict[str, Any]]] = {}
    for e in entries:
        if e["kind"] in ("request", "response", "access"):
            by_rid.setdefault(e["rid"], {})[e["kind"]] = e
    assert len(by_rid) == len(REQUESTS)
    compared = 0
    for sides in by_rid.values():
        request, response, access = sides["request"], sides["response"], sides["access"]
        for name in ("method", "scheme", "authority", "path", "query", "fragment"):
            assert request["req"].get(name) == access["req"].get(name), name
        assert response["resp"]["status"] == access["resp"]["status"]
        for ext, section in ((request, "req"), (response, "resp")):
            shared = _both(ext, access, section)
            assert shared == _both(access, ext, section)
            assert _marks(ext, section, set(shared)) == _marks(access, section, set(shared))
            compared += len(shared)
    # What the comparison covered: hashed, URL-parsed, joined and truncated values.
    assert compared >= 20
    stored = {n: v for s in by_rid.values() for n, v in s["access"]["req"]["headers"].items()}
    assert stored["x-rep"].startswith("hmac-sha256:")  # "one,two", joined, then hashed
    assert stored["cookie"].startswith("a=hmac-sha256:") and ",b=hmac-sha256:" in stored["cookie"]
    assert stored["user-agent"].endswith("...[truncated 72 bytes]")
    assert "S4" not in stored["referer"] and stored["referer"].startswith("https://a.example/p;s=")


# --- the reporter field: authenticated identity beside what the reporter claims --------------


SERVED_AS = "spiffe://cluster.local/ns/shop/sa/api"
REPORTER = Reporter(AUTH_MTLS, SERVED_AS, "ipv4:10.0.0.5:1")


def _tls_entry(local: str) -> al.HTTPAccessLogEntry:
    e = al.HTTPAccessLogEntry()
    e.request.path = "/x"
    if local:
        cert = al.TLSProperties.CertificateProperties(
            subject_alt_name=[al.TLSProperties.CertificateProperties.SubjectAltName(uri=local)]
        )
        e.common_properties.tls_properties.local_certificate_properties.CopyFrom(cert)
    return e


def _ext_proc_request(local: str) -> pb.ProcessingRequest:
    msg = pb.ProcessingRequest(request_headers=pb.HttpHeaders())
    attrs = struct_pb2.Struct()
    attrs.update({"xds.node.id": "sidecar~1", **({LOCAL_SAN: local} if local else {})})
    msg.attributes[ATTR_NAMESPACE].CopyFrom(attrs)
    return msg


def _captures(mode: str) -> list[Any]:
    policy = ReporterPolicy(transport="tls", destination=mode)
    access = AccessCapture(RedactionPolicy(), reporters=policy)
    claims = access.claims(REPORTER, "sidecar~1", {"cluster": "shop", "log": "audit"})
    ext = Capturer(RedactionPolicy())
    return [
        lambda local: access.fields(_tls_entry(local), claims)["reporter"],
        lambda local: ext.request(_ext_proc_request(local), Claims(REPORTER, policy))["reporter"],
    ]


def test_claims_are_stored_beside_the_authenticated_reporter() -> None:
    access, ext = _captures("off")
    assert access(SERVED_AS) == {
        "auth": "mtls",
        "id": SERVED_AS,
        "peer": "ipv4:10.0.0.5:1",
        "claimed": {
            "node": "sidecar~1",
            "cluster": "shop",
            "log": "audit",
            "dst_principal": SERVED_AS,
        },
    }
    assert ext(SERVED_AS)["claimed"] == {"node": "sidecar~1", "dst_principal": SERVED_AS}


@pytest.mark.parametrize("capture", [0, 1], ids=["access-log", "ext_proc"])
def test_reporter_not_the_destination_is_recorded_or_refused_by_both_captures(
    capture: int,
) -> None:
    intruder = "spiffe://cluster.local/ns/evil/sa/evil"
    record = _captures("record")[capture]
    assert "dst_mismatch" not in record(SERVED_AS)
    assert record(intruder)["dst_mismatch"] is True
    assert "dst_mismatch" not in record("")  # record: nothing to compare, not marked
    refuse = _captures("refuse")[capture]
    assert refuse(SERVED_AS)["id"] == SERVED_AS
    for local in (intruder, ""):  # refuse: naming no destination is a mismatch too
        with pytest.raises(ReporterRefused) as refused:
            refuse(local)
        assert refused.value.reason == "destination_mismatch"
