"""Only authenticated reporters write entries, and every entry names its reporter.

The attacks of a caller inside the mesh: a hand-made ext_proc stream straight
to the port (plaintext, TLS without a certificate, a certificate not on the
allow-list, a forged x-forwarded-client-cert), against the transports the
server offers: native mTLS, Istio's own sidecar (XFCC), a Unix socket. Real
gRPC on loopback and real Envoy; certificates made by tests/pki.py.
"""

from __future__ import annotations

import json
import stat
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc import metrics, processes
from extproc.envoyconf import ClientTLS, Endpoint
from extproc.errors import ConfigError
from extproc.trust.policy import ReporterPolicy
from extproc.trust.reporter import AUTH_MTLS, AUTH_NONE, AUTH_UNIX, AUTH_XFCC, ReporterRefused
from extproc.trust.sources import parse_networks, peer_ip
from extproc.trust.xfcc import xfcc_elements
from tests.attacks import OWN_ELEMENT, REVIEW_XFCC, SIDECAR_ATTACKS
from tests.conftest import AuditStack, read_entries, run_cli
from tests.messages import request_headers
from tests.pki import TestCA
from tests.topology import (
    ALLOWED,
    APPEND,
    AUDIT_SERVER_ID,
    INTRUDER,
    SANITIZE,
    XFCC_SERVER_ARGS,
    audit_sidecar,
    client_credentials,
    envoy_client_tls,
    tls_server_args,
)

UNAUTH_ENV = "EXTPROC_AUDIT_ALLOW_UNAUTHENTICATED"


class _Md:
    def __init__(self, key: str, value: str) -> None:
        self.key, self.value = key, value


def _xfcc(value: str) -> list[_Md]:
    return [_Md("x-forwarded-client-cert", value)]


# --- the rules, without a network ---------------------------------------------------------------

TLS_AUTH = {
    "spiffe_id": ({"peer_spiffe_id": [ALLOWED.encode()], "x509_subject": [b"CN=x"]}, ALLOWED),
    "uri_san": ({"peer_uri": [b"https://reporter.example/a"]}, "https://reporter.example/a"),
    "subject": ({"x509_subject": [b"CN=envoy,O=Example"]}, "CN=envoy,O=Example"),
}


@pytest.mark.parametrize(("auth", "identity"), TLS_AUTH.values(), ids=TLS_AUTH.keys())
def test_mtls_reporter_is_the_certificate_identity(auth: Any, identity: str) -> None:
    reporter = ReporterPolicy(transport="tls").identify("ipv4:10.0.0.9:4242", auth)
    assert (reporter.auth, reporter.id) == (AUTH_MTLS, identity)
    assert reporter.fields == {"auth": "mtls", "id": identity, "peer": "ipv4:10.0.0.9:4242"}


def test_unauthenticated_reporter_says_so() -> None:
    reporter = ReporterPolicy(allow_unauthenticated=True).identify("ipv4:127.0.0.1:5000")
    assert reporter.fields == {"auth": AUTH_NONE, "peer": "ipv4:127.0.0.1:5000"}


def test_unix_socket_reporter_is_the_socket() -> None:
    reporter = ReporterPolicy(transport="unix", unix_path="/run/a/audit.sock").identify("unix:")
    assert (reporter.auth, reporter.id) == (AUTH_UNIX, "unix:/run/a/audit.sock")


ISTIO = parse_networks(["127.0.0.6/32", "::6/128"], "--trust-xfcc-from")


def test_xfcc_reporter_is_the_element_the_own_proxy_added() -> None:
    # APPEND_FORWARD: a client may send any XFCC of its own; the proxy appends its element last.
    forged = f"By={AUDIT_SERVER_ID};URI={INTRUDER}"
    reporter = ReporterPolicy(trust_xfcc_from=ISTIO, xfcc_mode="APPEND_FORWARD").identify(
        "ipv4:127.0.0.6:33000", metadata=_xfcc(f"{forged},{OWN_ELEMENT}")
    )
    assert (reporter.auth, reporter.id) == (AUTH_XFCC, ALLOWED)


def test_sanitize_set_reporter_is_the_only_element() -> None:
    reporter = ReporterPolicy(trust_xfcc_from=ISTIO).identify(
        "ipv4:127.0.0.6:33000", metadata=_xfcc(OWN_ELEMENT)
    )
    assert (reporter.auth, reporter.id) == (AUTH_XFCC, ALLOWED)


# The caller's header, as the own proxy forwards it: (the header, --xfcc-mode, reason).
AMBIGUOUS_XFCC = {
    "review_attack_append_forward": (f"{REVIEW_XFCC},{OWN_ELEMENT}", APPEND, "xfcc_malformed"),
    "review_attack_sanitize_set": (f"{REVIEW_XFCC},{OWN_ELEMENT}", SANITIZE, "xfcc_malformed"),
    "quote_swallows_the_own_element": (
        f'URI={ALLOWED};Subject=",{OWN_ELEMENT}', APPEND, "xfcc_malformed"
    ),
    "repeated_uri": (f"{OWN_ELEMENT};URI={INTRUDER}", SANITIZE, "xfcc_malformed"),
    "empty_element": (f"{OWN_ELEMENT},", APPEND, "xfcc_malformed"),
    "empty_header": ("", SANITIZE, "xfcc_malformed"),
    "second_element_under_sanitize_set": (
        f"By={AUDIT_SERVER_ID};URI={INTRUDER},{OWN_ELEMENT}", SANITIZE, "xfcc_foreign"
    ),
    "last_element_by_another_proxy": (
        f"{OWN_ELEMENT},By=spiffe://other;URI={INTRUDER}", APPEND, "xfcc_foreign"
    ),
    "no_by_at_all": (f"URI={INTRUDER}", SANITIZE, "xfcc_foreign"),
}  # fmt: skip


@pytest.mark.parametrize(
    ("header", "mode", "reason"), AMBIGUOUS_XFCC.values(), ids=AMBIGUOUS_XFCC.keys()
)
def test_ambiguous_or_foreign_xfcc_is_refused(header: str, mode: str, reason: str) -> None:
    policy = ReporterPolicy(trust_xfcc_from=ISTIO, xfcc_by=AUDIT_SERVER_ID, xfcc_mode=mode)
    with pytest.raises(ReporterRefused) as refused:
        policy.identify("ipv4:127.0.0.6:1", metadata=_xfcc(header))
    assert refused.value.reason == reason


def test_several_xfcc_values_are_refused() -> None:
    # One header per request from Envoy; two metadata values have two readings.
    policy = ReporterPolicy(trust_xfcc_from=ISTIO)
    with pytest.raises(ReporterRefused) as refused:
        policy.identify("ipv4:127.0.0.6:1", metadata=_xfcc(OWN_ELEMENT) + _xfcc(OWN_ELEMENT))
    assert refused.value.reason == "xfcc_malformed"


def test_xfcc_from_a_connection_that_bypassed_the_proxy_is_refused() -> None:
    policy = ReporterPolicy(trust_xfcc_from=ISTIO)
    with pytest.raises(ReporterRefused) as refused:
        policy.identify("ipv4:10.1.2.3:40000", metadata=_xfcc(f"URI={ALLOWED}"))
    assert refused.value.reason == "untrusted_peer"


def test_ipv6_inbound_source_is_trusted() -> None:
    reporter = ReporterPolicy(trust_xfcc_from=ISTIO).identify(
        "ipv6:[::6]:41000", metadata=_xfcc(OWN_ELEMENT)
    )
    assert reporter.id == ALLOWED


@pytest.mark.parametrize(
    "header", [None, "By=x;Hash=y", "By=x;URI="], ids=["missing", "no-uri", "empty-uri"]
)
def test_xfcc_without_identity_is_refused(header: str | None) -> None:
    # PeerAuthentication PERMISSIVE: a plaintext client passes the proxy without XFCC.
    policy = ReporterPolicy(trust_xfcc_from=ISTIO)
    with pytest.raises(ReporterRefused) as refused:
        policy.identify("ipv4:127.0.0.6:1", metadata=_xfcc(header) if header is not None else ())
    assert refused.value.reason == "no_identity"


def test_xfcc_element_not_by_the_own_proxy_is_refused() -> None:
    policy = ReporterPolicy(trust_xfcc_from=ISTIO, xfcc_by=AUDIT_SERVER_ID)
    with pytest.raises(ReporterRefused) as refused:
        policy.identify("ipv4:127.0.0.6:1", metadata=_xfcc(f"By=spiffe://other;URI={ALLOWED}"))
    assert refused.value.reason == "xfcc_foreign"
    assert policy.identify("ipv4:127.0.0.6:1", metadata=_xfcc(OWN_ELEMENT)).id == ALLOWED


def test_allow_list_refuses_other_identities() -> None:
    policy = ReporterPolicy(transport="tls", allow=("spiffe://test.mesh/ns/shop/*",))
    assert policy.identify("p", {"peer_spiffe_id": [ALLOWED.encode()]}).id == ALLOWED
    with pytest.raises(ReporterRefused) as refused:
        policy.identify("p", {"peer_spiffe_id": [INTRUDER.encode()]})
    assert refused.value.reason == "not_allowed"


def test_allow_list_glob_is_case_sensitive() -> None:
    policy = ReporterPolicy(transport="tls", allow=("spiffe://test.mesh/ns/shop/*",))
    with pytest.raises(ReporterRefused):
        policy.identify("p", {"peer_spiffe_id": [b"spiffe://test.mesh/ns/SHOP/sa/x"]})


def test_destination_mismatch_is_recorded_or_refused() -> None:
    reporter = ReporterPolicy(transport="tls").identify("p", {"peer_spiffe_id": [ALLOWED.encode()]})
    record = ReporterPolicy(transport="tls", destination="record")
    assert record.check_destination(reporter, ALLOWED)
    assert record.check_destination(reporter, None)  # plaintext inbound: nothing to compare
    assert not record.check_destination(reporter, INTRUDER)
    with pytest.raises(ReporterRefused) as refused:
        ReporterPolicy(transport="tls", destination="refuse").check_destination(reporter, INTRUDER)
    assert refused.value.reason == "destination_mismatch"


CONFIG_ERRORS = {
    "allow_without_auth": {"allow": ("*",)},
    "destination_without_auth": {"destination": "record"},
    "xfcc_by_without_trust": {"xfcc_by": "spiffe://x"},
    "unknown_destination_mode": {"transport": "tls", "destination": "maybe"},
    "unknown_xfcc_mode": {"trust_xfcc_from": ISTIO, "xfcc_mode": "FORWARD_ONLY"},
    "unauthenticated_without_the_flag": {},
}


@pytest.mark.parametrize("kwargs", CONFIG_ERRORS.values(), ids=CONFIG_ERRORS.keys())
def test_inconsistent_reporter_options_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ReporterPolicy(**kwargs)


def test_peer_ip_parses_grpc_peers() -> None:
    assert str(peer_ip("ipv4:127.0.0.6:5")) == "127.0.0.6"
    assert str(peer_ip("ipv6:[::6]:5")) == "::6"
    assert peer_ip("unix:/x") is None and peer_ip("garbage") is None


def test_xfcc_quoted_values_keep_separators() -> None:
    elements = xfcc_elements('Subject="CN=a,O=b;c \\"q\\"";URI=spiffe://x,By=y;URI=z')
    assert elements == [
        {"subject": 'CN=a,O=b;c \\"q\\"', "uri": "spiffe://x"},
        {"by": "y", "uri": "z"},
    ]


def test_audited_request_xfcc_without_one_reading_names_nobody() -> None:
    # The capture path (src.principal) reads the same grammar: no guess either.
    assert xfcc_elements(f"{REVIEW_XFCC},{OWN_ELEMENT}") == []


# --- real gRPC: the hand-made stream of the review, against each listener -----------------------


@pytest.fixture
def pki(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


def _forged_exchange(channel: grpc.Channel, rid: str) -> list[Any]:
    stub = pb_grpc.ExternalProcessorStub(channel)
    # Request headers only, as the shipped filter sends (response_header_mode SKIP).
    messages = [request_headers(path="/admin/accounts/42", rid=rid)]
    return list(stub.Process(iter(messages), timeout=5))


def _business_entries(stack: AuditStack) -> list[dict[str, Any]]:
    return [e for e in read_entries(stack.store_url, stack.log_id) if e["kind"] != "writer"]


@pytest.fixture
def tls_server(make_stack: Any, pki: TestCA) -> Iterator[AuditStack]:
    stack = make_stack(extra_args=tls_server_args(pki))
    stack.start_server()
    yield stack


def test_mtls_allowed_reporter_is_logged_with_its_identity(
    tls_server: AuditStack, pki: TestCA
) -> None:
    address = f"127.0.0.1:{tls_server.grpc_port}"
    with grpc.secure_channel(address, client_credentials(pki, ALLOWED)) as channel:
        replies = _forged_exchange(channel, "allowed-1")
    assert [r.WhichOneof("response") for r in replies] == ["request_headers"]
    assert tls_server.stop_server() == 0
    entries = _business_entries(tls_server)
    assert [(e["kind"], e["rid"]) for e in entries] == [("request", "allowed-1")]
    for e in entries:
        assert e["reporter"]["auth"] == "mtls" and e["reporter"]["id"] == ALLOWED
        assert e["reporter"]["peer"].startswith("ipv4:127.0.0.1:")


def test_ext_proc_reporter_shows_as_last_seen(make_stack: Any, pki: TestCA) -> None:
    # The "reporter silent" alert reads this gauge: a proxy that reports over
    # ext_proc alone (no access log) must be seen too.
    metrics_port = processes.free_port()
    stack = make_stack(
        extra_args=[*tls_server_args(pki), "--metrics-listen", f"127.0.0.1:{metrics_port}"]
    )
    stack.start_server()
    address = f"127.0.0.1:{stack.grpc_port}"
    before = time.time()
    with grpc.secure_channel(address, client_credentials(pki, ALLOWED)) as channel:
        _forged_exchange(channel, "seen-1")
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    series = f'extproc_audit_reporter_last_seen_timestamp_seconds{{reporter="{ALLOWED}"}}'
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(series)]
    assert values and before - 1 <= values[0] <= time.time() + 1, values


FORGERS = {
    "plaintext": lambda pki, address: grpc.insecure_channel(address),
    "tls_without_certificate": lambda pki, address: grpc.secure_channel(
        address, client_credentials(pki, None)
    ),
    "certificate_from_another_ca": lambda pki, address: grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(
            pki.cert.read_bytes(),
            (other := TestCA(pki.dir / "other").issue("x", uris=(ALLOWED,))).key.read_bytes(),
            other.cert.read_bytes(),
        ),
    ),
    "identity_not_on_the_allow_list": lambda pki, address: grpc.secure_channel(
        address, client_credentials(pki, INTRUDER)
    ),
}
FORGER_CODES = {
    "plaintext": grpc.StatusCode.UNAVAILABLE,
    "tls_without_certificate": grpc.StatusCode.UNAVAILABLE,
    "certificate_from_another_ca": grpc.StatusCode.UNAVAILABLE,
    "identity_not_on_the_allow_list": grpc.StatusCode.PERMISSION_DENIED,
}


@pytest.mark.parametrize("forger", FORGERS, ids=FORGERS.keys())
def test_forged_stream_gets_nothing_into_the_log(
    tls_server: AuditStack, pki: TestCA, forger: str
) -> None:
    address = f"127.0.0.1:{tls_server.grpc_port}"
    with FORGERS[forger](pki, address) as channel, pytest.raises(grpc.RpcError) as failure:
        _forged_exchange(channel, f"forged-{forger}")
    assert failure.value.code() == FORGER_CODES[forger]
    with grpc.secure_channel(address, client_credentials(pki, ALLOWED)) as channel:
        assert len(_forged_exchange(channel, "honest-after")) == 1  # others unaffected
    assert tls_server.stop_server() == 0
    rids = {e["rid"] for e in _business_entries(tls_server)}
    assert rids == {"honest-after"}


def test_forged_xfcc_on_a_direct_connection_is_refused(make_stack: Any) -> None:
    stack = make_stack(extra_args=["--trust-xfcc-from", "127.0.0.6/32"])
    stack.start_server()
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)
        forged = [("x-forwarded-client-cert", f"By={AUDIT_SERVER_ID};URI={ALLOWED}")]
        with pytest.raises(grpc.RpcError) as failure:
            list(stub.Process(iter([request_headers(rid="f")]), metadata=forged, timeout=5))
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "own proxy" in (failure.value.details() or "")
    assert stack.stop_server() == 0
    assert _business_entries(stack) == []


def test_unix_socket_listener_is_group_only_and_names_the_reporter(
    make_stack: Any, tmp_path: Path
) -> None:
    sock = tmp_path / "run" / "audit.sock"
    sock.parent.mkdir()
    stack = make_stack(listen=f"unix:{sock}", extra_args=["--allow-reporter", "unix:*"])
    stack.start_server()
    mode = stat.S_IMODE(sock.stat().st_mode)
    assert mode & 0o007 == 0, oct(mode)  # nobody outside the owner and group
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        assert len(_forged_exchange(channel, "via-socket")) == 1
    assert stack.stop_server() == 0
    (entry,) = [e for e in _business_entries(stack) if e["kind"] == "request"]
    assert entry["reporter"] == {"auth": "unix", "id": f"unix:{sock}", "peer": "unix:"}
    strict = run_cli("verify", stack.store_url, "--vkey", stack.vkey(), "--require-authenticated")
    assert strict.returncode == 0 and "unauthenticated" not in strict.stdout, strict.stdout


def test_default_serve_without_authentication_refuses_to_start(tmp_path: Path) -> None:
    args = ["serve", "--store", str(tmp_path / "s"), "--key", str(tmp_path / "missing.key"),
            "--listen", "127.0.0.1:0", "--metrics-listen", "off"]  # fmt: skip
    refused = run_cli(*args)
    assert refused.returncode == 2, refused.stderr
    (line,) = refused.stderr.strip().splitlines()  # one line, no traceback
    assert "no authenticated reporters" in line and "--allow-unauthenticated" in line
    assert "--tls-cert" in line and "--trust-xfcc-from" in line and "unix:PATH" in line
    # The flag and its environment form get past the check (to the missing key).
    for extra, env in ((["--allow-unauthenticated"], {}), ([], {UNAUTH_ENV: "1"})):
        allowed = run_cli(*args, *extra, env=env)
        assert allowed.returncode == 2 and "missing.key" in allowed.stderr, allowed.stderr
    assert run_cli(*args, env={UNAUTH_ENV: "0"}).stderr == refused.stderr


def test_unauthenticated_entries_say_so_and_verify_counts_them(make_stack: Any) -> None:
    stack = make_stack()  # --allow-unauthenticated (tests/conftest.py)
    stack.start_server()
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        for i in range(3):
            _forged_exchange(channel, f"dev-{i}")
    assert stack.stop_server() == 0
    entries = _business_entries(stack)
    assert len(entries) == 3
    for e in entries:
        assert e["reporter"]["auth"] == "unauthenticated" and "id" not in e["reporter"]
    # A plain VALID does not hide them; --require-authenticated refuses them.
    vkey = stack.vkey()
    plain = run_cli("verify", stack.store_url, "--vkey", vkey)
    assert plain.returncode == 0, plain.stdout
    assert "3 entries from unauthenticated reporters" in plain.stdout
    assert "(3 from unauthenticated reporters), Object Lock" in plain.stdout.splitlines()[-1]
    doc = json.loads(run_cli("verify", stack.store_url, "--vkey", vkey, "--format", "json").stdout)
    assert doc["unauthenticated"] == 3 and doc["logs"][0]["unauthenticated"] == 3
    strict = run_cli("verify", stack.store_url, "--vkey", vkey, "--require-authenticated")
    assert strict.returncode == 1, strict.stdout
    assert "error: log e2e: 3 entries from unauthenticated reporters" in strict.stdout
    assert strict.stdout.splitlines()[-1].startswith("INVALID: 1 logs")
    table = run_cli("search", stack.store_url, "--vkey", vkey, "--format", "table")
    rows = [line for line in table.stdout.splitlines() if " request " in line]
    assert len(rows) == 3 and all(" unauthenticated " in row for row in rows)


def test_unauthenticated_listener_on_a_public_address_warns(make_stack: Any) -> None:
    stack = make_stack(listen="0.0.0.0:0")
    stack.start_server()
    assert stack.stop_server() == 0
    assert "UNAUTHENTICATED ingestion on 0.0.0.0:0" in stack.server_log()


# --- real Envoy ---------------------------------------------------------------------------------


@pytest.mark.envoy
def test_envoy_over_mtls_gets_every_request_logged_under_its_spiffe_id(
    make_stack: Any, pki: TestCA
) -> None:
    client = pki.issue("frontend", uris=(ALLOWED,))
    stack = make_stack(
        extra_args=tls_server_args(pki),
        envoy_tls=ClientTLS(str(client.cert), str(client.key), str(pki.cert), sni="audit"),
    ).start()
    result = stack.send(30)
    assert len(result.request_ids) == 30 and result.errors == 0  # every one answered 2xx
    assert stack.stop_server() == 0
    entries = _business_entries(stack)
    assert sorted(e["rid"] for e in entries if e["kind"] == "request") == sorted(result.request_ids)
    assert {(e["reporter"]["auth"], e["reporter"]["id"]) for e in entries} == {(AUTH_MTLS, ALLOWED)}
    verify = stack.verify()
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.envoy
def test_envoy_with_a_disallowed_certificate_is_refused_and_fails_closed(
    make_stack: Any, pki: TestCA
) -> None:
    client = pki.issue("ceo", uris=(INTRUDER,))
    stack = make_stack(
        extra_args=tls_server_args(pki),
        envoy_tls=ClientTLS(str(client.cert), str(client.key), str(pki.cert)),
    ).start()
    result = stack.send(10)
    assert not result.request_ids  # enforce mode: no request without its entry
    assert sum(result.statuses.values()) == 10 and all(s >= 500 for s in result.statuses)
    assert sum(stack.app.received.values()) == 0
    assert stack.stop_server() == 0
    assert _business_entries(stack) == []


@pytest.mark.envoy
def test_istio_shaped_sidecar_xfcc_names_the_reporting_proxy(
    make_stack: Any, pki: TestCA, tmp_path: Path
) -> None:
    stack = make_stack(extra_args=XFCC_SERVER_ARGS, envoy_tls=envoy_client_tls(pki))
    with audit_sidecar(pki, tmp_path, stack.grpc_port) as sidecar:
        stack.envoy_ext_proc = Endpoint("127.0.0.1", sidecar.port)  # the reporting Envoy -> sidecar
        stack.start()
        result = stack.send(20)
        assert len(result.request_ids) == 20
        assert stack.stop_server() == 0
    entries = _business_entries(stack)
    assert len(entries) == 40
    assert {(e["reporter"]["auth"], e["reporter"]["id"]) for e in entries} == {(AUTH_XFCC, ALLOWED)}
    assert all(e["reporter"]["peer"].startswith("ipv4:127.0.0.6:") for e in entries)


# What counts a reset of an ext_proc stream: the reporting Envoy (its audit
# cluster) and the server's own sidecar (its inbound connection manager).
STREAM_RESETS = (
    "cluster.extproc_audit.upstream_rq_tx_reset",
    "cluster.extproc_audit.upstream_rq_rx_reset",
    "http.inbound_50051.downstream_rq_rx_reset",
    "http.inbound_50051.downstream_rq_tx_reset",
)


@pytest.mark.envoy
def test_no_ext_proc_stream_is_reset_through_the_own_sidecar(
    make_stack: Any, pki: TestCA, tmp_path: Path, envoy_bin: str
) -> None:
    """The sidecar-reset-limit attack's cause, on each end of the supported range:
    a sidecar closes a connection whose peer resets streams past 1,000, then 33/s
    (nghttp2), with the access-log stream on it. With the shipped runtime
    (envoyconf.REPORTER_RUNTIME) Envoy half-closes each stream when its request
    ends and the server then ends it: no stream is reset, on either side."""
    stack = make_stack(
        extra_args=XFCC_SERVER_ARGS, envoy_tls=envoy_client_tls(pki), envoy_bin=envoy_bin
    )
    with audit_sidecar(pki, tmp_path, stack.grpc_port, binary=envoy_bin) as sidecar:
        stack.envoy_ext_proc = Endpoint("127.0.0.1", sidecar.port)
        stack.start()
        result = stack.send(300, concurrency=8)
        assert len(result.request_ids) == 300
        counted = {
            **processes.envoy_stats(stack.admin_port, "cluster.extproc_audit."),
            **processes.envoy_stats(sidecar.admin_port, "http.inbound_50051."),
        }
        assert counted.get("cluster.extproc_audit.upstream_rq_total", 0) >= 300
        assert {name: counted.get(name, 0) for name in STREAM_RESETS} == dict.fromkeys(
            STREAM_RESETS, 0
        )
        assert stack.stop_server() == 0
    entries = _business_entries(stack)
    requests = {e["rid"] for e in entries if e["kind"] == "request"}
    outcomes = {e["rid"] for e in entries if e["kind"] == "access" and "ref" in e}
    assert set(result.request_ids) <= requests & outcomes


@pytest.mark.envoy
@pytest.mark.parametrize(
    ("sidecar_mode", "server_mode", "forged", "reason"),
    SIDECAR_ATTACKS.values(),
    ids=SIDECAR_ATTACKS.keys(),
)
def test_forged_xfcc_through_the_own_sidecar_is_refused(
    make_stack: Any,
    pki: TestCA,
    tmp_path: Path,
    sidecar_mode: str,
    server_mode: str,
    forged: str,
    reason: str,
) -> None:
    stack = make_stack(extra_args=[*XFCC_SERVER_ARGS, "--xfcc-mode", server_mode])
    stack.start_server()
    with audit_sidecar(pki, tmp_path, stack.grpc_port, sidecar_mode) as sidecar:
        address = f"127.0.0.1:{sidecar.port}"
        with grpc.secure_channel(address, client_credentials(pki, INTRUDER)) as channel:
            stub = pb_grpc.ExternalProcessorStub(channel)
            metadata = [("x-forwarded-client-cert", forged)]
            with pytest.raises(grpc.RpcError) as failure:
                list(
                    stub.Process(
                        iter([request_headers(rid="forged")]), metadata=metadata, timeout=5
                    )
                )
        assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # The same sidecar and server take an honest reporter.
        with grpc.secure_channel(address, client_credentials(pki, ALLOWED)) as channel:
            assert len(_forged_exchange(channel, "honest")) == 1
    assert stack.stop_server() == 0
    assert f"refused a reporter ({reason})" in stack.server_log()
    entries = _business_entries(stack)
    assert [(e["rid"], e["reporter"]["id"]) for e in entries] == [("honest", ALLOWED)]


def test_reporter_metric_labels_are_bounded() -> None:
    # A caller cycling identities cannot grow the metrics without bound.
    made: list[str] = []

    def make(label: str) -> str:
        made.append(label)
        return label

    per = metrics.PerReporter(make)
    for i in range(metrics.MAX_REPORTER_LABELS + 50):
        per.get(f"spiffe://cluster.local/ns/a/sa/r{i}")
    assert len(made) == metrics.MAX_REPORTER_LABELS + 1 and made[-1] == "other"
    assert per.get("spiffe://cluster.local/ns/a/sa/r0") == "spiffe://cluster.local/ns/a/sa/r0"
    assert per.get("spiffe://cluster.local/ns/a/sa/new") == "other"


@pytest.mark.envoy
@pytest.mark.slow
def test_demo_showcase_entry_names_an_authenticated_reporter(tmp_path: Path) -> None:
    result = run_cli("demo", "--requests", "6", "--workdir", str(tmp_path / "d"))
    assert result.returncode == 0, result.stdout + result.stderr
    sock = tmp_path / "d" / "audit.sock"
    # Every entry of the run (6 request entries, 6 access entries) names the socket.
    assert f"reporter             unix unix:{sock} (12 entries" in result.stdout
    showcase = result.stdout[result.stdout.index("that entry") :]
    entry = json.loads(showcase[showcase.index("{") : showcase.rindex("}") + 1])
    assert (entry["reporter"]["auth"], entry["reporter"]["id"]) == ("unix", f"unix:{sock}")
    assert "unauthenticated" not in result.stdout
