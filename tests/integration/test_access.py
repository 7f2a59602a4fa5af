"""The access-log service (ALS): Envoy's batched record of every finished request.

Unit tests build real envoy.data.accesslog.v3 messages; the stream tests use
real gRPC against `serve`; the end-to-end tests run real Envoy (the
`http_grpc` access logger of extproc/envoyconf.py) into `serve` and `verify`.
"""

from __future__ import annotations

import http.client
import signal
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import address_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc import processes
from extproc.core import entry
from extproc.core.redact import REDACTED, RedactionPolicy
from extproc.server.access import AccessCapture, OutcomeMatcher, address_text
from tests.conftest import AuditStack, all_bundle_bytes, read_entries, run_cli
from tests.messages import (
    SERVED_AS,
    SPIFFE,
    als_messages,
    http_entry,
    request_headers,
    socket_address,
)
from tests.pki import TestCA
from tests.unit.test_capture import _NAMES, _VALUES, _plain


def capture(e: al.HTTPAccessLogEntry, policy: RedactionPolicy | None = None) -> dict[str, Any]:
    return AccessCapture(policy or RedactionPolicy()).fields(e)


# --- one entry ---------------------------------------------------------------------------------


def test_access_entry_carries_what_an_audit_asks_after_the_fact() -> None:
    fields = capture(http_entry(tls=True))
    assert fields["req"] == {
        "method": "POST",
        "scheme": "https",
        "authority": "api.shop",
        "path": "/orders",
        "query": f"page=2&token={REDACTED}",
        "protocol": "HTTP/2",
        "headers": {"user-agent": "curl/8"},
        "body_bytes": 42,
    }
    assert fields["resp"] == {
        "status": 200,
        "details": "via_upstream",
        "headers": {},
        "body_bytes": 7,
    }
    assert fields["src"] == {
        "address": "10.0.0.7:41000",
        "san": SPIFFE,
        "principal": SPIFFE,
        "from": {
            "address": "access_log:downstream_remote_address",
            "san": "access_log:peer_certificate",
            "principal": "access_log:peer_certificate",
        },
    }
    assert fields["dst"] == "10.0.0.5:8080"
    assert fields["reporter"]["claimed"] == {"dst_principal": SERVED_AS}  # a claim
    assert fields["upstream"] == {"host": "10.0.0.9:9000", "cluster": "inbound|8080||"}
    assert fields["route"] == "default" and fields["flags"] == "UF,URX"
    assert fields["timing"] == {"start_ms": 1_780_000_000_123, "duration_us": 4500}
    assert fields["rid"] == "rid-1"


def test_access_headers_are_redacted_like_ext_proc_headers() -> None:
    fields = capture(
        http_entry(
            request_headers={"Authorization": "Bearer eyJ.S2.sig", "cookie": "session=S3; a=b"},
            response_headers={
                "location": "https://c.example/cb?code=S4#access_token=S5",
                "set-cookie": "sid=S6; Path=/",
            },
            referer="https://app.example/?access_token=S7",
        )
    )
    encoded = entry.encode({**fields, "v": 1, "seq": 0, "prev": ""})
    for secret in (b"S2", b"S3", b"S4", b"S5", b"S6", b"S7", b"tok-S1"):
        assert secret not in encoded, secret
    assert fields["req"]["headers"]["authorization"] == f"Bearer {REDACTED}"  # names lower-cased


def test_access_header_bounds_apply() -> None:
    many = {f"x-h{i:05d}": "v" * 10 for i in range(5000)}
    fields = AccessCapture(RedactionPolicy(), max_headers=64).fields(
        http_entry(request_headers=many)
    )
    assert len(fields["req"]["headers"]) <= 64
    assert fields["req"]["headers_omitted"] >= 5000 - 64
    assert "req.headers.*" in fields["trunc"]


def test_missing_status_is_null_and_ipv6_addresses_are_bracketed() -> None:
    e = http_entry(status=None)
    e.common_properties.downstream_local_address.CopyFrom(socket_address("fd00::5", 8080))
    fields = capture(e)
    assert fields["resp"]["status"] is None
    assert fields["dst"] == "[fd00::5]:8080"
    assert address_text(address_pb2.Address(pipe=address_pb2.Pipe(path="/run/a.sock"))) == (
        "unix:/run/a.sock"
    )


# --- outcome matching --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_outcome_matches_reporter_request_id_and_local_address() -> None:
    matcher = OutcomeMatcher()
    matcher.expect(SPIFFE, "rid-1", "10.0.0.5:8080", 17)
    assert matcher.take("spiffe://other", "rid-1", "10.0.0.5:8080") is None  # another proxy
    assert matcher.take(SPIFFE, "rid-1", "10.1.1.1:80") is None  # its own outbound call
    assert matcher.take(SPIFFE, "rid-1", "10.0.0.5:8080") == (17, None)
    matcher.taken(SPIFFE, "rid-1", "10.0.0.5:8080", 17, 40)  # entry 40 is its outcome
    # A second outcome for the same request: linked, naming the first (a conflict).
    assert matcher.take(SPIFFE, "rid-1", "10.0.0.5:8080") == (17, 40)
    assert matcher.take(SPIFFE, "rid-1", "10.0.0.5:8080") == (17, 40)
    matcher.expect(SPIFFE, "rid-1", "10.0.0.5:8080", 50)  # a new request reusing the id
    assert matcher.take(SPIFFE, "rid-1", "10.0.0.5:8080") == (50, None)


def test_matched_requests_are_remembered_within_the_same_bounds() -> None:
    clock = FakeClock()
    matcher = OutcomeMatcher(window=10.0, max_pending=2, clock=clock)
    for i in range(3):
        matcher.expect("r", f"rid-{i}", "d", i)
        assert matcher.take("r", f"rid-{i}", "d") == (i, None)
        matcher.taken("r", f"rid-{i}", "d", i, 100 + i)
    assert len(matcher) == 2 and matcher.take("r", "rid-0", "d") is None  # over the bound
    assert matcher.take("r", "rid-2", "d") == (2, 102)
    clock.now = 11.0
    matcher.expect("r", "rid-new", "d", 9)
    assert len(matcher) == 1 and matcher.take("r", "rid-2", "d") is None  # past the window


def test_outcome_window_and_bound_expire_the_oldest() -> None:
    clock = FakeClock()
    matcher = OutcomeMatcher(window=10.0, max_pending=3, clock=clock)
    for i in range(4):
        matcher.expect("r", f"rid-{i}", "d", i)
    assert len(matcher) == 3 and matcher.take("r", "rid-0", "d") is None  # over the bound
    clock.now = 11.0
    matcher.expect("r", "rid-new", "d", 9)
    assert len(matcher) == 1  # everything older than the window went
    matcher.expect("r", "", "d", 10)  # no request id: nothing to match on
    assert len(matcher) == 1


# --- the stream, over real gRPC ------------------------------------------------------------------


@pytest.fixture
def server(make_stack: Any) -> Iterator[AuditStack]:
    stack = make_stack()
    stack.start_server()
    yield stack


def test_batches_become_access_entries_naming_the_stream(server: AuditStack) -> None:
    batches = [[http_entry(rid=f"b{b}-{i}") for i in range(25)] for b in range(4)]
    tcp = als_pb2.StreamAccessLogsMessage(
        tcp_logs=als_pb2.StreamAccessLogsMessage.TCPAccessLogEntries(
            log_entry=[al.TCPAccessLogEntry()] * 3
        )
    )
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = als_pb2_grpc.AccessLogServiceStub(channel)
        stub.StreamAccessLogs(iter([*als_messages(batches), tcp]), timeout=10)
    assert server.stop_server() == 0
    access = [e for e in read_entries(server.store_url, server.log_id) if e["kind"] == "access"]
    assert [e["rid"] for e in access] == [f"b{b}-{i}" for b in range(4) for i in range(25)]
    # What the stream's identifier says about its sender: claims, beside the reporter.
    assert all(
        e["reporter"]["claimed"]
        == {
            "node": "sidecar~10.0.0.5~web-1.shop~shop.svc.cluster.local",
            "cluster": "web.shop",
            "log": "extproc-audit",
        }
        for e in access
    )
    assert all(e["reporter"]["auth"] == "unauthenticated" for e in access)
    assert "3 TCP access-log entries refused" in server.server_log()  # counted, not logged
    assert server.verify().returncode == 0


def test_undecodable_access_log_bytes_end_that_stream_only(server: AuditStack) -> None:
    method = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        raw = channel.stream_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError):
            raw(iter([b"\xff\xff\xff garbage"]), timeout=10)
        stub = als_pb2_grpc.AccessLogServiceStub(channel)
        stub.StreamAccessLogs(als_messages([[http_entry(rid="after")]]), timeout=10)
    assert server.stop_server() == 0
    assert [
        e["rid"] for e in read_entries(server.store_url, server.log_id) if e["kind"] == "access"
    ] == ["after"]


def test_access_log_stream_obeys_the_reporter_rules(make_stack: Any, tmp_path: Any) -> None:
    pki = TestCA(tmp_path / "pki")
    server_cert = pki.issue("audit", ips=("127.0.0.1",))
    stack = make_stack(
        extra_args=[
            "--tls-cert", str(server_cert.cert), "--tls-key", str(server_cert.key),
            "--client-ca", str(pki.cert), "--allow-reporter", "spiffe://cluster.local/ns/shop/*",
        ]
    )  # fmt: skip
    stack.start_server()
    address = f"127.0.0.1:{stack.grpc_port}"

    def send(identity: str, rid: str) -> None:
        issued = pki.issue(identity.rsplit("/", 1)[-1], uris=(identity,))
        creds = grpc.ssl_channel_credentials(
            pki.cert.read_bytes(), issued.key.read_bytes(), issued.cert.read_bytes()
        )
        with grpc.secure_channel(address, creds) as channel:
            stub = als_pb2_grpc.AccessLogServiceStub(channel)
            stub.StreamAccessLogs(als_messages([[http_entry(rid=rid)]]), timeout=10)

    with pytest.raises(grpc.RpcError) as refused:
        send("spiffe://cluster.local/ns/admin/sa/ceo", "forged")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with grpc.insecure_channel(address) as plain, pytest.raises(grpc.RpcError):
        als_pb2_grpc.AccessLogServiceStub(plain).StreamAccessLogs(
            als_messages([[http_entry(rid="plaintext")]]), timeout=5
        )
    send(SPIFFE, "honest")
    assert stack.stop_server() == 0
    access = [e for e in read_entries(stack.store_url, stack.log_id) if e["kind"] == "access"]
    assert [(e["rid"], e["reporter"]["id"]) for e in access] == [("honest", SPIFFE)]


def test_second_outcome_from_another_stream_is_a_conflict_not_a_silent_win(
    make_stack: Any, tmp_path: Any
) -> None:
    """The review's attack: a second connection under the same identity sends a
    forged 200 for another stream's request before the real 500 arrives."""
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

    sock = tmp_path / "run" / "audit.sock"
    sock.parent.mkdir()
    stack = make_stack(listen=f"unix:{sock}", extra_args=["--allow-reporter", "unix:*"])
    stack.start_server()
    # The destination as http_entry's: the outcome is matched by it too.
    request = request_headers("/payments/42", "victim", **{"destination.address": "10.0.0.5:8080"})
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        replies = list(ext_proc_grpc.ExternalProcessorStub(channel).Process(iter([request])))
        assert [r.WhichOneof("response") for r in replies] == ["request_headers"]
    for status in (200, 500):  # the forger's stream first, then the real one
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            stub = als_pb2_grpc.AccessLogServiceStub(channel)
            stub.StreamAccessLogs(
                als_messages([[http_entry(rid="victim", status=status)]]), timeout=10
            )
    assert stack.stop_server() == 0
    assert "1 access-log entries are a second outcome of a request" in stack.server_log()
    entries = [e for e in read_entries(stack.store_url, stack.log_id) if e["kind"] != "writer"]
    request_entry, forged, real = entries
    assert request_entry["kind"] == "request" and forged["resp"]["status"] == 200
    assert forged["ref"] == real["ref"] == request_entry["seq"] and "conflict" not in forged
    assert real["resp"]["status"] == 500 and real["conflict"] == forged["seq"]
    shown = (
        f"entry {real['seq']}: a second outcome of request entry {request_entry['seq']}, "
        f"whose first outcome is entry {forged['seq']}"
    )
    verify = stack.verify()
    assert verify.returncode == 0 and "warning: log e2e: " in verify.stdout
    assert shown in verify.stdout, verify.stdout
    search = run_cli("search", stack.store_url, "--vkey", stack.vkey(), "--request-id", "victim")
    assert search.returncode == 0 and shown in search.stderr, search.stderr
    assert len(search.stdout.splitlines()) == 3  # the request and both outcomes


# --- real Envoy ----------------------------------------------------------------------------------


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.envoy
def test_envoy_access_logs_are_redacted_and_matched(make_stack: Any) -> None:
    stack = make_stack().start()
    statuses = [
        _get(stack.envoy_port, "/pay?card=1;token=S1-token", {"authorization": "Basic S2-basic"}),
        _get(stack.envoy_port, "/login", {"referer": "https://app.example/?access_token=S3-ref"}),
    ]
    assert statuses == [200, 302]
    assert stack.stop_server() == 0
    published = all_bundle_bytes(stack.store_url)
    for secret in (b"S1-token", b"S2-basic", b"S3-ref", b"demo-oauth-code-S1", b"demo-token-S2"):
        assert secret not in published, secret
    entries = read_entries(stack.store_url, stack.log_id)
    requests = {e["rid"]: e for e in entries if e["kind"] == "request"}
    access = [e for e in entries if e["kind"] == "access"]
    assert len(access) == 2 and all(requests[e["rid"]]["seq"] == e["ref"] for e in access)
    login = next(e for e in access if e["req"]["path"] == "/login")
    assert login["resp"]["headers"]["location"].startswith(
        "https://client.example/cb?code=[redacted]"
    )
    assert stack.verify().returncode == 0


@pytest.mark.envoy
def test_server_down_shows_in_envoy_drop_counter_and_as_a_gap(make_stack: Any) -> None:
    # Observe mode: nothing waits for the server, so requests go on while it
    # is down; what Envoy could not deliver it counts, and the log shows the gap.
    stack = make_stack(mode="observe", extra_args=["--heartbeat-interval", "0.5"]).start()
    assert len(stack.send(20, concurrency=2).request_ids) == 20
    time.sleep(0.6)
    assert stack.stop_server(signal.SIGKILL) == -signal.SIGKILL
    down = stack.send(30, concurrency=2)
    assert len(down.request_ids) == 30  # the mesh did not notice
    time.sleep(2.5)  # several flush intervals: Envoy tries, and drops
    stats = processes.envoy_stats(stack.admin_port, "access_logs.grpc_access_log")
    stack.start_server()
    after = stack.send(20, concurrency=2)
    time.sleep(0.5)
    assert stack.stop_server() == 0
    stats = processes.envoy_stats(stack.admin_port, "access_logs.grpc_access_log")
    written = stats["access_logs.grpc_access_log.logs_written"]
    entries = read_entries(stack.store_url, stack.log_id)
    logged = {e["rid"] for e in entries if e["kind"] == "access"}
    assert set(after.request_ids) <= logged
    lost = set(down.request_ids) - logged
    assert lost  # nothing to receive them: gone
    # Envoy counts them as written (it wrote them into a stream that broke), so
    # a loss is Envoy's written minus what the server logged, per reporter:
    # the PromQL in docs/ARCHITECTURE.md.
    assert written - len(logged) == len(lost), (written, len(logged), stats)
    verify = run_cli("verify", stack.store_url, "--vkey", stack.vkey(), "--gap-threshold", "1")
    assert verify.returncode == 0, verify.stdout
    assert "gap: crash" in verify.stdout


def test_listener_level_entry_without_a_request_is_marked() -> None:
    e = al.HTTPAccessLogEntry(
        common_properties=al.AccessLogCommon(
            downstream_remote_address=socket_address("10.0.0.7", 41000),
            response_flags=al.ResponseFlags(no_route_found=True),
        )
    )
    fields = capture(e)
    assert fields["no_request"] is True and fields["flags"] == "NR"
    assert fields["resp"]["status"] is None
    assert "no_request" not in capture(http_entry())


@given(
    headers=st.dictionaries(_NAMES.map(str.lower), _VALUES, max_size=12),
    max_value_bytes=st.sampled_from([64, 65, 100, 2048]),
)
@settings(max_examples=300, deadline=None)
def test_access_headers_are_what_the_policy_makes_of_them(
    headers: dict[str, str], max_value_bytes: int
) -> None:
    # The ALS fast path (no policy.header() for names it has no work for, no
    # policy.truncate() for short values) held to the plain reading.
    policy = RedactionPolicy(max_value_bytes=max_value_bytes)
    fields = capture(http_entry(request_headers=headers), policy)
    expected = {"user-agent": "curl/8"}
    cut_names = set()
    for name, value in headers.items():
        expected[name.lower()], cut = _plain(policy, name.lower(), value)
        if cut:
            cut_names.add(f"req.headers.{name.lower()}")
    assert fields["req"]["headers"] == expected
    assert cut_names == {t for t in fields.get("trunc", []) if t.startswith("req.headers.")}
