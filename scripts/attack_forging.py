"""Forging entries (docs/THREATS.md): reporters that are not who they say, claims
stored as claimed, destinations refused, outcomes in conflict.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import grpc
from attack_lab import (
    FORGING,
    Findings,
    Lab,
    Server,
    attack,
    code_of,
    destined,
    exchange,
    expect_nothing_logged,
    expect_refused,
    refusal_logged,
    refused,
    rids,
    send_access_log,
)

from extproc import processes
from extproc.core.note import Signer
from extproc.keys import write_signer
from tests import attacks as A
from tests.conftest import read_entries
from tests.messages import als_messages, http_entry, request_headers, response_headers
from tests.pki import TestCA
from tests.topology import ALLOWED, INTRUDER

# --- Forging entries -----------------------------------------------------------------------


@attack(
    "unauthenticated-default-serve", FORGING,
    "an unauthenticated reporter against a default serve (review 6)",
    "test_reporters.py::test_default_serve_without_authentication_refuses_to_start", "cli",
)  # fmt: skip
def unauthenticated_default_serve(lab: Lab, f: Findings) -> None:
    work = lab.dir("default-serve")
    write_signer(work / "signing.key", Signer.generate("default"))
    port, health = processes.free_port(), processes.free_port()
    args = [
        "serve", "--store", str(work / "store"), "--key", str(work / "signing.key"),
        "--log-id", "default", "--wal-dir", str(work / "wal"), "--listen", f"127.0.0.1:{port}",
        "--health-listen", f"127.0.0.1:{health}", "--metrics-listen", "off",
        "--bundle-max-age", "0.2", *lab.serve_args("cli"),
    ]  # fmt: skip
    with (work / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "extproc", *args], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            listening = _listening(proc, f"127.0.0.1:{health}")
            if listening:
                _forge_against(f, proc, port, work)
        finally:
            processes.stop(proc)
    if listening:
        return
    text = (work / "serve.log").read_text(errors="replace")
    f.check(
        proc.returncode == 2 and text.count("\n") == 1 and "no authenticated reporters" in text,
        f"exit {proc.returncode}, not one line naming what to configure: {text[:200]!r}",
    )
    f.note("exit 2 before listening: nothing to forge into")


def _listening(proc: subprocess.Popen[bytes], health: str) -> bool:
    """Whether a starting serve came to listen (True) or exited (False)."""
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(grpc.RpcError):
            if processes.grpc_serving(health):
                return True
        time.sleep(0.05)
    return proc.poll() is None


def _forge_against(f: Findings, proc: subprocess.Popen[bytes], port: int, work: Path) -> None:
    """A default serve listens: the review's hand-made request, as anyone could send it."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        error = refused(lambda: exchange(channel, [request_headers(A.FORGED_PATH, "forged")]))
    processes.stop(proc)
    forged = [e for e in read_entries(str(work / "store"), "default") if e.get("rid") == "forged"]
    f.check(
        False,
        f"a default serve took a hand-made ProcessingRequest ({code_of(error)}): "
        f"{len(forged)} forged entries logged",
    )
    f.note(f"serve listened unauthenticated; forged entries logged {len(forged)}")


@attack(
    "forged-stream-mtls", FORGING,
    "a hand-made ProcessingRequest to the port: plaintext, TLS without a certificate, "
    "another CA's certificate, an identity not allowed",
    "test_reporters.py::test_forged_stream_gets_nothing_into_the_log[*]", "direct",
)  # fmt: skip
def forged_stream_mtls(server: Server, f: Findings) -> None:
    other = TestCA(server.lab.dir("other-ca")).issue("x", uris=(ALLOWED,))
    forgers = {
        "plaintext": (grpc.insecure_channel(server.address), "UNAVAILABLE"),
        "no certificate": (server.channel(None), "UNAVAILABLE"),
        "another CA": (grpc.secure_channel(server.address, grpc.ssl_channel_credentials(
            server.lab.pki.cert.read_bytes(), other.key.read_bytes(),
            other.cert.read_bytes())), "UNAVAILABLE"),
        "not allowed": (server.channel(INTRUDER), "PERMISSION_DENIED"),
    }  # fmt: skip
    for name, (channel, code) in forgers.items():
        with channel:
            error = refused(partial(exchange, channel, _forged_request(name)))
        expect_refused(f, error, code, name)
    with server.channel() as channel:
        f.check(
            len(exchange(channel, destined("honest-mtls", ALLOWED))) == 1,
            "the allowed reporter was not answered",
        )
    f.note(f"{len(forgers)} of {len(forgers)} refused; honest reporter answered")
    expect_nothing_logged(f, server, {f"forged-{name}" for name in forgers})


def _forged_request(name: str) -> list[Any]:
    return [request_headers(A.FORGED_PATH, f"forged-{name}")]


@attack(
    "forged-xfcc-direct", FORGING,
    "a hand-made ProcessingRequest straight to an XFCC listener, with and without a forged "
    "x-forwarded-client-cert naming an allowed reporter",
    "test_reporters.py::test_forged_xfcc_on_a_direct_connection_is_refused", "mesh",
)  # fmt: skip
def forged_xfcc_direct(server: Server, f: Findings) -> None:
    before = server.metric("extproc_audit_reporters_refused_total", reason="untrusted_peer")
    direct = f"127.0.0.1:{server.stack.grpc_port}"
    forged = [("x-forwarded-client-cert", A.WELL_FORMED_FORGERY)]
    with grpc.insecure_channel(direct) as channel:
        bare = refused(lambda: exchange(channel, _forged_request("direct")))
        xfcc = refused(lambda: exchange(channel, _forged_request("xfcc"), forged))
    expect_refused(f, bare, "PERMISSION_DENIED", "no XFCC")
    expect_refused(f, xfcc, "PERMISSION_DENIED", "forged XFCC")
    counted = server.metric("extproc_audit_reporters_refused_total", reason="untrusted_peer")
    f.check(counted - before == 2, f"reporters_refused_total{{untrusted_peer}} +{counted - before}")
    refusal_logged(f, server)
    f.note("2 of 2 PERMISSION_DENIED (untrusted_peer), counted")
    expect_nothing_logged(f, server, {"forged-direct", "forged-xfcc"})


def _sidecar_attack(server: Server, f: Findings, row: str, address: str) -> None:
    """One row of SIDECAR_ATTACKS: the intruder's certificate and the forged header
    through the sidecar at `address`; refused for its reason, the honest reporter
    through the same sidecar logged."""
    _, _, header, reason = A.SIDECAR_ATTACKS[row]
    before = server.metric("extproc_audit_reporters_refused_total", reason=reason)
    forged = [("x-forwarded-client-cert", header)]
    with server.channel(INTRUDER, address) as channel:
        error = refused(lambda: exchange(channel, [request_headers(A.FORGED_PATH, row)], forged))
    expect_refused(f, error, "PERMISSION_DENIED", row)
    after = server.metric("extproc_audit_reporters_refused_total", reason=reason)
    f.check(after - before == 1, f"{row}: reporters_refused_total{{{reason}}} +{after - before}")
    refusal_logged(f, server)
    with server.channel(ALLOWED, address) as channel:
        exchange(channel, [request_headers("/orders", f"honest-{row}"), response_headers()])
    f.note(f"{row}: PERMISSION_DENIED ({reason})")

    def honest_logged() -> None:
        mine = [e for e in server.entries() if e.get("rid") == f"honest-{row}"]
        f.check(
            bool(mine) and all(e["reporter"]["id"] == ALLOWED for e in mine),
            f"{row}: the honest reporter through the same sidecar was not logged as itself",
        )

    f.afterwards(honest_logged)


@attack(
    "forged-xfcc-sidecar-review", FORGING,
    "a forged reporter through the server's own sidecar, XFCC ending in an unbalanced quote "
    "(review 1: APPEND_FORWARD sidecar and server)",
    "test_reporters.py::test_forged_xfcc_through_the_own_sidecar_is_refused[*]", "append",
)  # fmt: skip
def forged_xfcc_sidecar_review(server: Server, f: Findings) -> None:
    _sidecar_attack(server, f, "review_attack_append_forward", server.address)
    expect_nothing_logged(f, server, {"review_attack_append_forward"})


@attack(
    "forged-xfcc-sidecar", FORGING,
    "a forged reporter through the own sidecar: the review's header under SANITIZE_SET, a "
    "well-formed forgery through a sidecar left at APPEND_FORWARD",
    "test_reporters.py::test_forged_xfcc_through_the_own_sidecar_is_refused[*]", "mesh",
)  # fmt: skip
def forged_xfcc_sidecar(server: Server, f: Findings) -> None:
    _sidecar_attack(server, f, "review_attack_sanitize_set", server.address)
    _sidecar_attack(server, f, "forged_element_appended", server.misconfigured)
    expect_nothing_logged(f, server, {"review_attack_sanitize_set", "forged_element_appended"})


@attack(
    "claims-stored-as-claimed", FORGING,
    "an allowed reporter states a made-up node id, cluster and destination principal (review 7)",
    "test_builder.py::test_claims_are_stored_beside_the_authenticated_reporter", "mesh",
)  # fmt: skip
def claims_stored_as_claimed(server: Server, f: Findings) -> None:
    batch = [http_entry(rid="made-up-claims", tls=True, served_as=A.MADE_UP_DESTINATION)]
    with server.channel() as channel:
        status = send_access_log(channel, als_messages([batch], A.MADE_UP_NODE, A.MADE_UP_CLUSTER))
    f.check(status == "OK", f"the access-log stream ended {status}")

    def check() -> None:
        (e,) = [e for e in server.entries() if e.get("rid") == "made-up-claims"]
        reporter = e["reporter"]
        f.check(
            (reporter.get("auth"), reporter.get("id")) == ("xfcc", ALLOWED),
            f"reporter {reporter.get('auth')}/{reporter.get('id')}, not the certificate's",
        )
        claimed = reporter.get("claimed", {})
        want = {"node": A.MADE_UP_NODE, "cluster": A.MADE_UP_CLUSTER,
                "dst_principal": A.MADE_UP_DESTINATION}  # fmt: skip
        f.check(want.items() <= claimed.items(), f"claims not stored as claimed: {claimed}")
        f.note("node, cluster, dst_principal under reporter.claimed; reporter.id the certificate's")

    f.afterwards(check)


@attack(
    "destination-refused", FORGING,
    "--reporter-is-destination refuse on both paths: another destination, or none named",
    "test_builder.py::test_reporter_not_the_destination_is_recorded_or_refused_by_both_captures",
    "direct",
)  # fmt: skip
def destination_refused(server: Server, f: Findings) -> None:
    reason = "destination_mismatch"
    before = server.metric("extproc_audit_reporters_refused_total", reason=reason)
    with server.channel() as channel:
        for rid, served_as in (("dst-other", A.MADE_UP_DESTINATION), ("dst-none", "")):
            error = refused(partial(exchange, channel, destined(rid, served_as)))
            expect_refused(f, error, "PERMISSION_DENIED", f"ext_proc {rid}")
        f.check(
            len(exchange(channel, destined("dst-own", ALLOWED))) == 1,
            "the reporter's own request was not answered",
        )
        batch = [http_entry(rid="als-other", tls=True, served_as=A.MADE_UP_DESTINATION),
                 http_entry(rid="als-none", tls=False),
                 http_entry(rid="als-own", tls=True, served_as=ALLOWED)]  # fmt: skip
        status = send_access_log(channel, als_messages([batch]))
    f.check(status == "OK", f"the access-log stream ended {status}")
    counted = server.metric("extproc_audit_reporters_refused_total", reason=reason)
    f.check(counted - before == 4, f"reporters_refused_total{{{reason}}} +{counted - before}")
    refusal_logged(f, server)
    f.note("4 of 4 refused (2 ext_proc, 2 access log); the reporter's own logged")
    expect_nothing_logged(f, server, {"dst-other", "dst-none", "als-other", "als-none"})

    def own_logged() -> None:
        f.check({"dst-own", "als-own"} <= set(rids(server.entries())), "own requests not logged")

    f.afterwards(own_logged)


@attack(
    "outcome-conflict", FORGING,
    "a second access-log stream under the same identity sends a forged 200 before the "
    "real 500 (review 7)",
    "test_access.py::test_second_outcome_from_another_stream_is_a_conflict_not_a_silent_win",
    "mesh",
)  # fmt: skip
def outcome_conflict(server: Server, f: Findings) -> None:
    before = server.metric("extproc_audit_outcomes_total", result="conflict")
    request = request_headers("/payments/42", "victim", **{"destination.address": "10.0.0.5:8080"})
    with server.channel() as channel:
        exchange(channel, [request, response_headers("500")])
    for status in (200, 500):  # the forger's stream first, then the real one
        with server.channel() as channel:
            send_access_log(channel, als_messages([[http_entry(rid="victim", status=status)]]))
    counted = server.metric("extproc_audit_outcomes_total", result="conflict")
    f.check(counted - before == 1, f"outcomes_total{{conflict}} +{counted - before}")

    def check() -> None:
        mine = [e for e in server.entries() if e.get("rid") == "victim" and e["kind"] == "access"]
        f.check(len(mine) == 2, f"{len(mine)} outcomes stored, not both")
        if len(mine) == 2:
            first, second = mine
            f.check(
                first["ref"] == second["ref"] and second.get("conflict") == first["seq"],
                "the second outcome is not stored as a conflict naming the first",
            )
        f.note("both outcomes kept, the second marked conflict; counted")

    f.afterwards(check)
