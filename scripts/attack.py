#!/usr/bin/env python3
"""The project attacks itself: the attack families of docs/THREATS.md, run against
live servers behind real Envoy, on loopback only.

Each attack sends, plants or hands over the same bytes its tests use (one
definition of each input: tests/attacks.py, tests/tampering.py, the topology of
tests/topology.py) and asserts the outcome from the real artefacts: gRPC
statuses, the server's log lines and /metrics, WAL files, published objects,
and the output and exit status of `verify`, `search` and `check-proof`. Where an
attack has a budget (memory, latency, event-loop stall, seconds until
publication goes on) the table shows what was measured against what bound.

The worlds, each set up once and attacked in turn:

  cli       the command line alone: a default `serve`, mistyped store URLs, a
            newline in --origin-prefix, a world-readable key
  direct    `serve` with native mTLS and --reporter-is-destination refuse; the
            attacker holds an allowed reporter's certificate (a compromised Envoy)
  append    `serve --xfcc-mode APPEND_FORWARD` behind its own sidecar (real
            Envoy) in Istio's default APPEND_FORWARD: the review's XFCC attack
  mesh      the shipped topology: `serve` behind its own sidecar (SANITIZE_SET,
            and a second one left at APPEND_FORWARD), a reporting Envoy with an
            allowed certificate in front of an upstream app, a hash key, both
            captures, the self-audit every second; honest traffic flows while
            the mesh is attacked; the store is attacked while the writer publishes
  load      the same shipped topology again, for the attack that is a load
            (1,000 requests/s): its 20,000 requests would swell the log the
            mesh world's other attacks measure
  pristine  a clean log written through Envoy, then attacked by whoever holds
            write access to the bucket or a signing key

    .venv/bin/python scripts/attack.py --quick           # CI (test_attack.py): ~45 s
    .venv/bin/python scripts/attack.py --json out.json   # the run in docs/THREATS.md: ~1.5 min
    .venv/bin/python scripts/attack.py --only als-500k,secrets
    .venv/bin/python scripts/attack.py --only unauthenticated-default-serve \\
        --weaken unauthenticated                         # must print FAILED, exit 1

--weaken switches a defence off (a serve option that widens what the server
takes), to show that an attack would see the hole: its row must read FAILED.
The exit status is 0 only if every attack run held.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this tree's extproc and tests/

from extproc import processes
from extproc.attributes import LOCAL_SAN, PEER_SAN
from extproc.core import layout
from extproc.core.note import Signer
from extproc.envoyconf import Endpoint
from extproc.hashkey import write_hash_key
from extproc.keys import write_signer
from extproc.store import open_store
from extproc.store.local import LocalStore
from tests import attacks as A
from tests.conftest import AuditStack, read_entries, stack_factory
from tests.helpers import tree_bytes, write_log
from tests.messages import (
    ALS_METHOD,
    EXT_PROC_METHOD,
    als_messages,
    http_entry,
    request_headers,
    response_headers,
)
from tests.pki import TestCA
from tests.tampering import (
    TAMPERING,
    Pristine,
    checkpoint_sizes,
    forked,
    local_bucket,
    make_pristine,
    truncated,
)
from tests.topology import (
    ALLOWED,
    APPEND,
    INTRUDER,
    XFCC_SERVER_ARGS,
    audit_sidecar,
    client_credentials,
    envoy_client_tls,
    tls_server_args,
)

ROOT = Path(__file__).resolve().parents[1]
# The families, as docs/THREATS.md names its sections.
FORGING = "Forging entries"
STALLING = "Stalling or stopping the server"
HIDING = "Hiding or changing what was published"
KEYS = "Keys"
SECRETS = "Secrets"
AUDITOR = "The auditor's view"
MISTAKES = "Mistakes that look like success"
FAMILIES = (FORGING, STALLING, HIDING, KEYS, SECRETS, AUDITOR, MISTAKES)

# Bounds (issue 16, docs/PERFORMANCE.md): what an attack may cost at most.
P99_MS = 100.0  # honest requests through Envoy while the attack runs
STALL_MS = 1000.0  # the event loop: Envoy's ext_proc message_timeout fails a request closed
SERVER_RSS_MB = 500.0
VERIFY_RSS_MB = 300.0
RESUME_S = 10.0  # publication goes on "within seconds" whatever was planted
CHILD_TIMEOUT_S = 120.0  # a command that runs longer hangs (a FIFO read would)

# --weaken NAME: (world, serve options that switch a defence off).
WEAKENINGS = {
    "unauthenticated": ("cli", ["--allow-unauthenticated"]),
    "secrets": ("mesh", ["--clear-header", "x-consul-token"]),
}


# --- rows ----------------------------------------------------------------------------------


class Findings:
    """What one attack found: its problems (none: held), what it measured, and the
    checks that can only run once its world's server has stopped. `timed`: whether
    a time over its bound is a problem (full runs) or only shown (--quick: CI on a
    shared machine asserts no speed; a stall long enough to fail requests still
    fails them, and that is counted)."""

    def __init__(self, timed: bool = True) -> None:
        self.timed = timed
        self.problems: list[str] = []
        self.budget: list[str] = []
        self.later: list[Callable[[], None]] = []

    def check(self, ok: bool, problem: str) -> bool:
        if not ok:
            self.problems.append(problem)
        return ok

    def within(self, what: str, value: float, bound: float, unit: str) -> None:
        """Record `what` as measured against its bound; over it is a problem
        (a time: only when timed)."""
        shown = f"{value:,.1f}" if unit == "s" else f"{value:,.0f}"
        over = value >= bound
        timing = unit in ("ms", "s")
        mark = " (over: not enforced in --quick)" if over and timing and not self.timed else ""
        self.budget.append(f"{what} {shown} {unit} < {bound:,.0f}{mark}")
        if not timing or self.timed:
            self.check(not over, f"{what} {value:,.1f} {unit}: over the bound of {bound:,.0f}")

    def note(self, text: str) -> None:
        self.budget.append(text)

    def afterwards(self, check: Callable[[], None]) -> None:
        self.later.append(check)

    def guarded(self, step: Callable[[], None]) -> None:
        """Run one step of the attack; an exception is a problem, never a crash."""
        try:
            step()
        except Exception as e:
            self.problems.append(f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}")


@dataclass(frozen=True)
class Attack:
    id: str
    family: str
    title: str
    tests: str  # the tests that hold it
    world: str
    run: Callable[[Any, Findings], None]


@dataclass
class Row:
    id: str
    family: str
    attack: str
    held: bool
    budget: str
    problems: list[str]
    seconds: float
    tests: str


ATTACKS: list[Attack] = []
F = TypeVar("F", bound=Callable[..., None])


def attack(id: str, family: str, title: str, tests: str, world: str) -> Callable[[F], F]:
    """Register an attack: run(world, findings) in `world`."""

    def register(run: F) -> F:
        ATTACKS.append(Attack(id, family, title, tests, world, run))
        return run

    return register


# --- measuring -----------------------------------------------------------------------------


def metric(port: int, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include these, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def peak_rss_mb(pid: int) -> float:
    """A process's largest resident set so far (VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


class LoopProbe:
    """The server's event loop, watched: a health check every 20 ms on the
    health port (served by the same loop); the longest answer is the longest
    stall the loop had while the probe ran."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.max_ms = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not self._stop.wait(0.02):
                started = time.perf_counter()
                with contextlib.suppress(grpc.RpcError):
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
                self.max_ms = max(self.max_ms, (time.perf_counter() - started) * 1000)
                self.samples += 1

    def __enter__(self) -> LoopProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Honest:
    """Honest requests through Envoy: latency, status and request id of each."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)  # those answered 2xx

    @property
    def failed(self) -> int:
        return sum(1 for s in self.statuses if not 200 <= s < 300)


def _one_request(
    port: int, conn: http.client.HTTPConnection | None, honest: Honest, lock: threading.Lock
) -> http.client.HTTPConnection | None:
    """One honest request on `conn` (a new one if None); the connection to go on with."""
    rid = f"honest-{uuid.uuid4()}"
    started = time.perf_counter()
    try:
        conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/orders?page=2", headers={"x-request-id": rid})
        response = conn.getresponse()
        response.read()
        status = response.status
    except (OSError, http.client.HTTPException):
        if conn is not None:
            conn.close()
        conn, status = None, 0
    with lock:
        honest.latencies_ms.append((time.perf_counter() - started) * 1000)
        honest.statuses.append(status)
        if 200 <= status < 300:
            honest.request_ids.append(rid)
    return conn


def honest_load(port: int, rate: float, seconds: float, workers: int = 8) -> Honest:
    """`rate` requests per second for `seconds` through Envoy on `port`, each
    worker on its own keep-alive connection, whatever the answer times."""
    honest, lock = Honest(), threading.Lock()

    def worker() -> None:
        conn = None
        start = time.perf_counter()
        for i in range(int(seconds * rate / workers)):
            time.sleep(max(0.0, start + i * workers / rate - time.perf_counter()))
            conn = _one_request(port, conn, honest, lock)
        if conn is not None:
            conn.close()

    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(worker) for _ in range(workers)]:
            f.result()
    return honest


@dataclass
class Child:
    status: int  # -1: did not end within the timeout (killed)
    stdout: str
    stderr: str
    peak_rss_mb: float
    seconds: float


def run_child(*args: str, timeout: float = CHILD_TIMEOUT_S, cwd: Path | None = None) -> Child:
    """`extproc-audit ARGS` as a child process: its exit status, output, peak RSS."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "extproc", *args], stdout=out, stderr=err, cwd=cwd
        )
        status, rss = -1, 0.0
        while time.monotonic() - started < timeout:
            pid, wait_status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status, rss = os.waitstatus_to_exitcode(wait_status), usage.ru_maxrss / 1024
                proc.returncode = status
                break
            time.sleep(0.02)
        else:
            proc.kill()
            proc.wait()
        out.seek(0)
        err.seek(0)
        return Child(
            status,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            rss,
            time.monotonic() - started,
        )


def raw_printable(text: str) -> list[str]:
    """The characters of `text` that would drive a terminal (controls other than
    a newline, format characters, line separators, surrogates)."""
    bad = {"Cc", "Cf", "Zl", "Zp", "Cs"}
    return [c for c in text if c != "\n" and unicodedata.category(c) in bad]


# --- the lab and its worlds ----------------------------------------------------------------


@dataclass
class Lab:
    work: Path
    quick: bool
    weakened: set[str]
    make: Callable[..., AuditStack]
    pki: TestCA
    envoy: str | None = None  # every Envoy of the run (--envoy), else the venv's
    _creds: dict[str | None, grpc.ChannelCredentials] = field(default_factory=dict)

    def serve_args(self, world: str) -> list[str]:
        """Options that switch a defence off in this world (--weaken)."""
        return [a for name in sorted(self.weakened) for a in WEAKENINGS[name][1]
                if WEAKENINGS[name][0] == world]  # fmt: skip

    def credentials(self, identity: str | None) -> grpc.ChannelCredentials:
        """Client credentials with a certificate of the lab's CA for `identity`."""
        if identity not in self._creds:
            self._creds[identity] = client_credentials(self.pki, identity)
        return self._creds[identity]

    def dir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class Server:
    """A live server under attack and how to reach it."""

    stack: AuditStack
    metrics_port: int
    address: str  # where reporters connect (the server, or its sidecar)
    lab: Lab
    misconfigured: str = ""  # a second sidecar of this server left at APPEND_FORWARD
    hash_key: bytes = b""
    sidecar_admin: int = 0  # the admin port of the server's own sidecar (mesh)

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.metrics_port, name, **labels)

    def channel(self, identity: str | None = ALLOWED, address: str = "") -> grpc.Channel:
        return grpc.secure_channel(
            address or self.address,
            self.lab.credentials(identity),
            options=[("grpc.max_send_message_length", -1)],
        )

    def entries(self) -> list[dict[str, Any]]:
        return read_entries(self.stack.store_url, self.stack.log_id)

    def log_text(self) -> str:
        return self.stack.server_log()


def _stack(lab: Lab, world: str, args: list[str], **kwargs: Any) -> tuple[AuditStack, int]:
    """A stack for `world`: serve with `args`, /metrics on a port of its own and
    the defences --weaken switches off; (the stack, its metrics port)."""
    port = processes.free_port()
    metrics_args = ["--metrics-listen", f"127.0.0.1:{port}"]
    return lab.make(extra_args=[*args, *metrics_args, *lab.serve_args(world)], **kwargs), port


@contextlib.contextmanager
def cli_world(lab: Lab) -> Iterator[Lab]:
    yield lab


@contextlib.contextmanager
def direct_world(lab: Lab) -> Iterator[Server]:
    """serve with native mTLS, --reporter-is-destination refuse, idle streams ended after 2 s."""
    refuse = ["--reporter-is-destination", "refuse", "--stream-idle-timeout", "2"]
    stack, port = _stack(lab, "direct", [*tls_server_args(lab.pki), *refuse])
    stack.start_server()
    yield Server(stack, port, f"127.0.0.1:{stack.grpc_port}", lab)
    _stop(stack)


@contextlib.contextmanager
def append_world(lab: Lab) -> Iterator[Server]:
    """serve --xfcc-mode APPEND_FORWARD behind its own sidecar at Istio's default."""
    stack, port = _stack(lab, "append", [*XFCC_SERVER_ARGS, "--xfcc-mode", APPEND])
    stack.start_server()
    with audit_sidecar(lab.pki, stack.workdir, stack.grpc_port, APPEND, binary=lab.envoy) as car:
        yield Server(stack, port, f"127.0.0.1:{car.port}", lab)
        _stop(stack)


@contextlib.contextmanager
def mesh_world(lab: Lab, name: str = "mesh") -> Iterator[Server]:
    """The shipped topology, with the hash key and both captures the secrets need
    (`name`: the world it is, for --weaken)."""
    key_path = lab.dir(f"{name}-keys") / "hash.key"
    hash_key = write_hash_key(key_path)
    args = [*XFCC_SERVER_ARGS, "--hash-key", str(key_path), *A.SECRET_SERVE_ARGS,
            "--self-audit-interval", "1"]  # fmt: skip
    stack, port = _stack(lab, name, args, envoy_tls=envoy_client_tls(lab.pki),
                         envoy_patch=A.patch_envoy_for_secrets)  # fmt: skip
    binary = lab.envoy
    with (
        audit_sidecar(lab.pki, stack.workdir, stack.grpc_port, binary=binary) as sidecar,
        audit_sidecar(lab.pki, stack.workdir, stack.grpc_port, APPEND, binary=binary) as other,
    ):
        stack.envoy_ext_proc = Endpoint("127.0.0.1", sidecar.port)  # the reporter -> sidecar
        stack.start()
        yield Server(stack, port, f"127.0.0.1:{sidecar.port}", lab, f"127.0.0.1:{other.port}",
                     hash_key, sidecar.admin_port)  # fmt: skip
        _stop(stack)  # before its sidecar: Envoy's last access logs still reach it


@dataclass
class Published:
    """A clean log, published through Envoy and closed, in the lab."""

    p: Pristine
    lab: Lab

    def dir(self, name: str) -> Path:
        return self.lab.dir(f"pristine-{name}")


@contextlib.contextmanager
def pristine_world(lab: Lab) -> Iterator[Published]:
    yield Published(make_pristine(lab.make), lab)


def _stop(stack: AuditStack) -> None:
    """SIGTERM, as a rollout does: the server must exit 0 having published everything."""
    status = stack.stop_server()
    if status != 0:
        raise RuntimeError(f"the server exited {status} on SIGTERM")


WORLDS: dict[str, Callable[[Lab], contextlib.AbstractContextManager[Any]]] = {
    "cli": cli_world,
    "direct": direct_world,
    "append": append_world,
    "mesh": mesh_world,
    "load": partial(mesh_world, name="load"),
    "pristine": pristine_world,
}


# --- helpers the attacks share -------------------------------------------------------------


def exchange(channel: grpc.Channel, messages: list[Any], metadata: Any = None) -> list[Any]:
    """One ext_proc stream carrying `messages`; the replies (raises grpc.RpcError)."""
    stub = pb_grpc.ExternalProcessorStub(channel)
    return list(stub.Process(iter(messages), metadata=metadata, timeout=10))


def refused(call: Callable[[], object]) -> grpc.RpcError | None:
    """The error a call ended with, or None if it succeeded."""
    try:
        call()
    except grpc.RpcError as e:
        return e
    return None


def code_of(error: grpc.RpcError | None) -> str:
    return "OK" if error is None else str(error.code().name)


def send_access_log(channel: grpc.Channel, messages: Any) -> str:
    """One access-log stream; the gRPC status it ended with."""
    stub = als_pb2_grpc.AccessLogServiceStub(channel)
    return code_of(refused(lambda: stub.StreamAccessLogs(messages, timeout=10)))


def send_raw_access_log(channel: grpc.Channel, data: bytes) -> grpc.RpcError | None:
    call = channel.stream_unary(ALS_METHOD, request_serializer=None, response_deserializer=None)
    return refused(lambda: call(iter([data]), timeout=30))


def rids(entries: list[dict[str, Any]], kind: str | None = None) -> list[str]:
    return [e.get("rid", "") for e in entries if kind is None or e["kind"] == kind]


def expect_refused(f: Findings, error: grpc.RpcError | None, code: str, what: str) -> None:
    f.check(code_of(error) == code, f"{what}: {code_of(error)}, not {code}")


def expect_nothing_logged(f: Findings, server: Server, forged: set[str]) -> None:
    """Afterwards: no entry of these request ids in the published log."""

    def check() -> None:
        found = forged & set(rids(server.entries()))
        f.check(not found, f"forged entries in the log: {sorted(found)}")
        f.note(f"forged entries logged {len(found)} of {len(forged)}")

    f.afterwards(check)


def refusal_logged(f: Findings, server: Server) -> None:
    """The server's log says it refuses (one line per 5 s: the metrics count each)."""
    f.check("refused a report" in server.log_text(), "no server log line says it refused")


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
            len(exchange(channel, _destined("honest-mtls", ALLOWED))) == 1,
            "the allowed reporter was not answered",
        )
    f.note(f"{len(forgers)} of {len(forgers)} refused; honest reporter answered")
    expect_nothing_logged(f, server, {f"forged-{name}" for name in forgers})


def _forged_request(name: str) -> list[Any]:
    return [request_headers(A.FORGED_PATH, f"forged-{name}")]


def _destined(rid: str, served_as: str) -> list[Any]:
    """A request as the Envoy serving `served_as` reports it (its local certificate)."""
    return [request_headers("/orders", rid, **({LOCAL_SAN: served_as} if served_as else {}))]


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
            error = refused(partial(exchange, channel, _destined(rid, served_as)))
            expect_refused(f, error, "PERMISSION_DENIED", f"ext_proc {rid}")
        f.check(
            len(exchange(channel, _destined("dst-own", ALLOWED))) == 1,
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


# --- Stalling or stopping the server -------------------------------------------------------


@attack(
    "als-500k", STALLING,
    "one access-log message of 500,000 empty entries (0.95 MiB) a second, by an allowed "
    "reporter, while enforce traffic flows (review 2)",
    "test_access_intake.py::test_500k_entry_access_log_message_is_refused_while_enforce_requests"
    "_go_on; scripts/bench_hostile.py als phase", "mesh",
)  # fmt: skip
def als_500k(server: Server, f: Findings) -> None:
    # Honest traffic beside the attack: 100 requests/s (the load itself is
    # another attack's, sidecar-reset-limit).
    seconds, rate = (5.0, 100.0) if server.lab.quick else (9.0, 100.0)
    message = A.empty_entries_message(A.HOSTILE_ENTRIES)
    label = {"reporter": ALLOWED, "budget": "message"}
    before = server.metric("extproc_audit_access_budget_refused_total", **label)
    envoy_before = _envoy_failures(server)
    errors: list[grpc.RpcError | None] = []
    stop = threading.Event()

    def attacker() -> None:
        with server.channel() as channel:
            while not stop.wait(0 if not errors else 1.0):
                errors.append(send_raw_access_log(channel, message))

    thread = threading.Thread(target=attacker)
    with LoopProbe(f"127.0.0.1:{server.stack.health_port}") as probe:
        thread.start()
        try:
            honest = honest_load(server.stack.envoy_port, rate, seconds)
        finally:
            stop.set()
            thread.join()
    codes = {code_of(e) for e in errors}
    f.check(codes == {"RESOURCE_EXHAUSTED"}, f"the messages ended {codes}")
    counted = server.metric("extproc_audit_access_budget_refused_total", **label) - before
    f.check(
        counted == A.HOSTILE_ENTRIES * len(errors),
        f"budget refusals counted {counted:.0f}, sent {A.HOSTILE_ENTRIES * len(errors)}",
    )
    _honest_budget(f, server, honest, probe, envoy_before)
    f.note(f"{len(errors)} messages refused")
    _nothing_lost(f, server, honest)


ENVOY_FAILURES = (
    "cluster.extproc_audit.upstream_cx_destroy_remote_with_active_rq",
    "http.ingress_http.downstream_rq_5xx",
    "http.ingress_http.ext_proc.streams_failed",
    "http.ingress_http.ext_proc.message_timeouts",
    "access_logs.grpc_access_log.logs_dropped",
)


def _logs_written(server: Server) -> int:
    stats = processes.envoy_stats(server.stack.admin_port, "access_logs.grpc_access_log.")
    return stats.get("access_logs.grpc_access_log.logs_written", 0)


def _envoy_failures(server: Server) -> dict[str, int]:
    """The reporting Envoy's counters of what failed: requests, ext_proc, access logs."""
    stats = processes.envoy_stats(server.stack.admin_port)
    return {n.rsplit(".", 1)[-1]: stats.get(n, 0) for n in ENVOY_FAILURES}


def _honest_budget(
    f: Findings,
    server: Server,
    honest: Honest,
    probe: LoopProbe,
    envoy_before: dict[str, int],
    *,
    p99_bound: bool = True,
) -> None:
    """The honest requests' budgets while an attack ran: p99 (unless the load
    itself is the attack), failures, the loop, RSS."""
    after = _envoy_failures(server)
    envoy = {k: after[k] - envoy_before[k] for k in after if after[k] > envoy_before[k]}
    f.check(
        honest.failed == 0 and not envoy,
        f"{honest.failed} of {len(honest.statuses)} honest requests failed; Envoy {envoy}",
    )
    if p99_bound:
        f.within("p99", p99(honest.latencies_ms), P99_MS, "ms")
    f.note(f"{honest.failed} of {len(honest.statuses)} failed")
    f.within("loop stall", probe.max_ms, STALL_MS, "ms")
    assert server.stack.server is not None
    f.within("RSS peak", peak_rss_mb(server.stack.server.pid), SERVER_RSS_MB, "MB")


def _nothing_lost(f: Findings, server: Server, honest: Honest) -> None:
    """Afterwards: every honest request answered 2xx has its request entry and its outcome."""

    def check() -> None:
        entries = server.entries()
        requests = set(rids(entries, "request"))
        outcomes = {e["rid"] for e in entries if e["kind"] == "access" and "ref" in e}
        lost = [r for r in honest.request_ids if r not in requests or r not in outcomes]
        f.check(bool(honest.request_ids) and not lost, f"{len(lost)} honest requests lost")
        f.note(f"entries lost {len(lost)} of {len(honest.request_ids)}")

    f.afterwards(check)


@attack(
    "many-headers", STALLING,
    "one ext_proc message of 60,000 headers (the event loop was busy 243 s)",
    "test_capture.py::test_header_count_past_the_bound_is_counted_not_stored; "
    "scripts/bench_hostile.py", "mesh",
)  # fmt: skip
def many_headers(server: Server, f: Findings) -> None:
    count = 5 if server.lab.quick else 20
    data = A.many_headers_request(A.MANY_HEADERS)
    answers = []
    with server.channel() as channel, LoopProbe(f"127.0.0.1:{server.stack.health_port}") as probe:
        call = channel.stream_stream(
            EXT_PROC_METHOD, request_serializer=None, response_deserializer=None
        )
        for _ in range(count):
            started = time.perf_counter()
            replies = list(call(iter([data, response_headers().SerializeToString()]), timeout=30))
            answers.append((time.perf_counter() - started) * 1000)
            f.check(len(replies) == 2, f"{len(replies)} replies")
            time.sleep(0.05)  # the probe's turn
    f.check(probe.samples > count, f"the loop was probed {probe.samples} times only")
    f.within("loop stall", probe.max_ms, STALL_MS, "ms")
    f.note(f"{count} messages of {len(data):,} bytes answered in at most {max(answers):,.0f} ms")

    def check() -> None:
        mine = [e for e in server.entries() if e.get("rid") == "many-headers"
                and e["kind"] == "request"]  # fmt: skip
        omitted = [e.get("req", {}).get("headers_omitted", 0) for e in mine]
        f.check(len(mine) == count and min(omitted) >= A.MANY_HEADERS - 300,
                f"{len(mine)} entries, headers_omitted {omitted}")  # fmt: skip
        f.note(f"{min(omitted):,} headers of each counted, not stored")

    f.afterwards(check)


@attack(
    "stream-flood", STALLING,
    "1,000 streams held open on one connection by an allowed reporter",
    "(no test: --max-streams-per-connection and --stream-idle-timeout are gRPC settings)",
    "direct",
)  # fmt: skip
def stream_flood(server: Server, f: Findings) -> None:
    streams = 300 if server.lab.quick else 1000
    before = server.metric("extproc_audit_streams_total")
    timed_out = server.metric("extproc_audit_streams_timed_out_total")
    seen = asyncio.run(_flood(server, streams, before))
    f.check(0 < seen[0] <= 100, f"{seen[0]:.0f} streams admitted at once on one connection")
    f.note(f"{seen[0]:.0f} of {streams} streams admitted at once (bound 100)")
    ended = server.metric("extproc_audit_streams_timed_out_total") - timed_out
    f.check(ended >= seen[0], f"only {ended:.0f} silent streams ended by the idle timeout")
    f.note(f"{ended:.0f} silent streams ended after 2 s; honest exchange {seen[1]:.0f} ms")


async def _flood(server: Server, streams: int, before: float) -> tuple[float, float]:
    """Open `streams` silent ext_proc streams on one connection; (streams the
    server admitted after 1 s, ms of an honest exchange on another connection)."""
    release = asyncio.Event()

    async def silent() -> Any:
        await release.wait()
        return
        yield  # an async generator that sends nothing

    creds = server.lab.credentials(ALLOWED)
    async with grpc.aio.secure_channel(server.address, creds) as channel:
        call = channel.stream_stream(
            EXT_PROC_METHOD, request_serializer=None, response_deserializer=None
        )
        calls = [call(silent()) for _ in range(streams)]
        await asyncio.sleep(1.0)
        admitted = server.metric("extproc_audit_streams_total") - before
        started = time.perf_counter()
        with server.channel() as other:
            await asyncio.to_thread(exchange, other, _destined("flood-honest", ALLOWED))
        honest_ms = (time.perf_counter() - started) * 1000
        await asyncio.sleep(2.5)  # the idle timeout (2 s) ends the silent ones
        release.set()
        for c in calls:
            c.cancel()
    return admitted, honest_ms


@attack(
    "hostile-streams", STALLING,
    "bytes that are not protobuf, and streams out of order",
    "test_server.py::test_hostile_stream_gets_a_status_and_others_are_unaffected[*], "
    "test_undecodable_bytes_end_the_stream_not_the_server", "mesh",
)  # fmt: skip
def hostile_streams(server: Server, f: Findings) -> None:
    mark = len(server.log_text())
    with server.channel() as channel:
        raw = channel.stream_stream(
            EXT_PROC_METHOD, request_serializer=None, response_deserializer=None
        )
        error = refused(lambda: list(raw(iter([A.UNDECODABLE]), timeout=10)))
        expect_refused(f, error, "INVALID_ARGUMENT", "undecodable ext_proc bytes")
        error = send_raw_access_log(channel, A.UNDECODABLE)
        expect_refused(f, error, "INVALID_ARGUMENT", "undecodable access-log bytes")
        for name, (messages, code) in A.HOSTILE_STREAMS.items():
            expect_refused(f, refused(partial(exchange, channel, messages)), code, name)
        honest = exchange(
            channel, [request_headers("/orders", "after-hostile"), response_headers()]
        )
    f.check(len(honest) == 2, "the next honest stream was not answered")
    log = server.log_text()[mark:]
    f.check("failed" not in log and "raceback" not in log, "a failure of the server logged")
    f.note(f"{len(A.HOSTILE_STREAMS) + 2} streams ended with their status; the next one answered")


@attack(
    "forged-status", STALLING,
    '`:status "²00"` and other non-ASCII digits (each stream failed INTERNAL with a traceback)',
    "test_stream_failures.py, test_capture.py::test_unparseable_status_is_stored_as_data_not_an"
    "_exception[*]", "mesh",
)  # fmt: skip
def forged_status(server: Server, f: Findings) -> None:
    before = server.metric("extproc_audit_stream_errors_total", code="INTERNAL")
    mark = len(server.log_text())
    with server.channel() as channel:
        for i, status in enumerate(A.FORGED_STATUSES):
            replies = exchange(
                channel, [request_headers("/s", f"status-{i}"), response_headers(status)]
            )
            f.check(len(replies) == 2, f"{status!r}: {len(replies)} replies")
    errors = server.metric("extproc_audit_stream_errors_total", code="INTERNAL") - before
    f.check(errors == 0, f"{errors:.0f} streams failed INTERNAL")
    log = server.log_text()[mark:]
    f.check("stream failed" not in log and "Traceback" not in log, "a failure logged")

    def check() -> None:
        stored = {e["rid"]: e["resp"] for e in server.entries() if e["kind"] == "response"
                  and e.get("rid", "").startswith("status-")}  # fmt: skip
        raw = [stored.get(f"status-{i}", {}) for i in range(len(A.FORGED_STATUSES))]
        f.check(
            [(r.get("status"), r.get("status_raw")) for r in raw]
            == [(None, s) for s in A.FORGED_STATUSES],
            f"stored as {raw}",
        )
        f.note("stored as data (status null, status_raw); 0 INTERNAL, no traceback")

    f.afterwards(check)


@attack(
    "sidecar-reset-limit", STALLING,
    "an HTTP client sends 1,000 requests/s through one reporter for 20 s; each ext_proc "
    "stream used to end with RST_STREAM, and past 1,000 resets, then 33/s (nghttp2), the "
    "server's own sidecar closed the reporter's connection, with the access-log stream on it",
    "test_server.py::test_answered_stream_is_never_ended_first_so_no_side_resets_it[*], "
    "test_drain_ends_answered_streams_with_ok_not_a_failure, "
    "test_reporters.py::test_no_ext_proc_stream_is_reset_through_the_own_sidecar[*]",
    "load",
)  # fmt: skip
def sidecar_reset_limit(server: Server, f: Findings) -> None:
    seconds, rate = (4.0, 500.0) if server.lab.quick else (20.0, 1000.0)
    envoy_before = _envoy_failures(server)
    resets = _stream_resets(server)
    written = _logs_written(server)
    logged = server.metric("extproc_audit_access_entries_total", reporter=ALLOWED)
    with LoopProbe(f"127.0.0.1:{server.stack.health_port}") as probe:
        started = time.monotonic()
        honest = honest_load(server.stack.envoy_port, rate, seconds, workers=32)
        took = time.monotonic() - started
    time.sleep(1.0)  # Envoy flushes its access logs every 0.2 s
    f.note(f"{len(honest.statuses):,} requests in {took:.0f} s "
           f"({len(honest.statuses) / took:,.0f}/s, {rate:,.0f}/s offered)")  # fmt: skip
    reset = {k: v - resets[k] for k, v in _stream_resets(server).items() if v > resets[k]}
    f.check(not reset, f"ext_proc streams reset: {reset}")
    f.note(f"streams reset {sum(reset.values())}")
    closed = _envoy_failures(server)["upstream_cx_destroy_remote_with_active_rq"]
    closed -= envoy_before["upstream_cx_destroy_remote_with_active_rq"]
    f.check(closed == 0, f"the own sidecar closed the reporting Envoy's connection {closed} "
            "times with streams on it (HTTP/2 GOAWAY: its RST_STREAM rate limit)")  # fmt: skip
    f.note(f"reporter connections closed {closed}")
    written = _logs_written(server) - written
    logged = server.metric("extproc_audit_access_entries_total", reporter=ALLOWED) - logged
    f.note(f"Envoy wrote {written:,} access-log entries, the server logged {logged:,.0f} "
           "(the gap alert ExtprocAuditAccessLogGap sees the difference)")  # fmt: skip
    # The load is the attack: p99 is what this machine gives at that rate, shown
    # against the bound only (a saturated 2-core VM is not a stall of the server).
    f.note(f"p99 {p99(honest.latencies_ms):,.0f} ms")
    _honest_budget(f, server, honest, probe, envoy_before, p99_bound=False)
    _nothing_lost(f, server, honest)


def _stream_resets(server: Server) -> dict[str, int]:
    """ext_proc streams reset, as the reporting Envoy and the server's own sidecar count them."""
    reporter = processes.envoy_stats(server.stack.admin_port, "cluster.extproc_audit.upstream_rq_")
    sidecar = processes.envoy_stats(server.sidecar_admin, "http.inbound_50051.downstream_rq_")
    counted = {**reporter, **sidecar}
    names = (
        "cluster.extproc_audit.upstream_rq_tx_reset",
        "cluster.extproc_audit.upstream_rq_rx_reset",
        "http.inbound_50051.downstream_rq_rx_reset",
        "http.inbound_50051.downstream_rq_tx_reset",
    )
    return {n: counted.get(n, 0) for n in names}


# --- Hiding or changing what was published -------------------------------------------------


def _published_size(server: Server) -> int:
    return int(server.metric("extproc_audit_published_entries"))


def _wait(condition: Callable[[], bool], within: float) -> float:
    """Seconds until `condition()` holds; raises TimeoutError after `within`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise TimeoutError(f"not within {within:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started


def _quiet(server: Server) -> int:
    """Wait until everything logged is published; the published size (the next claim's seq)."""
    _wait(lambda: _published_size(server) == server.metric("extproc_audit_log_entries"), 30)
    return _published_size(server)


@attack(
    "planted-claims", HIDING,
    "400 planted claims at the next position and names off the layout, while the writer "
    "publishes (review 4: publication stopped > 120 s, the log INVALID for good)",
    "test_hostile_store.py::test_planted_claims_cost_o1_each_and_never_stop_publication, "
    "test_writer_isolation.py::test_400_planted_claims_and_names_off_the_layout_do_not_stop_the"
    "_mesh", "mesh",
)  # fmt: skip
def planted_claims(server: Server, f: Findings) -> None:
    store = open_store(server.stack.store_url)
    position = _quiet(server)
    A.plant_claims(store, server.stack.log_id, position, A.PLANTED_CLAIMS)
    A.plant_off_layout(store, server.stack.log_id)
    honest = honest_load(server.stack.envoy_port, 50.0, 1.0)
    logged = server.metric("extproc_audit_log_entries")
    resumed = _wait(lambda: _published_size(server) >= logged, RESUME_S * 3)
    f.check(honest.failed == 0, f"{honest.failed} honest requests failed (503?)")
    f.within("publication resumed in", resumed, RESUME_S, "s")
    _nothing_lost(f, server, honest)

    def check() -> None:
        records = [e for e in server.entries() if e.get("event") == "foreign"]
        counted = max((r.get("count", 0) for r in records), default=0)
        f.check(counted >= A.PLANTED_CLAIMS, f"the writer recorded {counted} foreign objects")
        f.note(f"{counted} foreign objects recorded in {len(records)} writer entries")

    f.afterwards(check)


@attack(
    "store-bomb", HIDING,
    "a 1 MB gzip bomb (1 GiB) unclaimed and at a claimed range, a FIFO, a symlink to "
    "/dev/zero, names not UTF-8, in the live server's local store (review 3)",
    "test_hostile_store.py::test_unclaimed_gzip_bomb_is_reported_and_never_read, "
    "test_fifo_and_symlinks_in_a_local_store_are_foreign_objects_detected, "
    "test_writer_restart_and_self_audit_never_read_a_planted_bomb; "
    "scripts/bench_hostile.py --store-bomb", "mesh",
)  # fmt: skip
def store_bomb(server: Server, f: Findings) -> None:
    root, log_id = Path(server.stack.store_url), server.stack.log_id
    store = LocalStore(root)
    _quiet(server)
    name = _first_bundle(store, log_id)
    bomb = A.gzip_bomb()
    unclaimed = layout.bundle_key("", log_id, name.first, name.last + 1000, gzip=True)
    store.put_once(unclaimed, bomb, None)
    store.put_once(layout.bundle_key("", log_id, name.first, name.last, gzip=True), bomb, None)
    planted = A.plant_non_files(root, root / "logs" / log_id, first=10**9)
    honest = honest_load(server.stack.envoy_port, 50.0, 1.0)
    f.check(honest.failed == 0, f"{honest.failed} honest requests failed after the plants")
    time.sleep(1.5)  # a self-audit (every second) runs over the planted store
    assert server.stack.server is not None
    f.within("server RSS peak", peak_rss_mb(server.stack.server.pid), SERVER_RSS_MB, "MB")
    _nothing_lost(f, server, honest)
    f.afterwards(lambda: _audit_planted_store(server, f, planted))


def _first_bundle(store: LocalStore, log_id: str) -> Any:
    for info in store.list(layout.log_prefix("", log_id) + "entries/"):
        name = layout.parse_key("", info.key)
        if name is not None and name.bundle is not None:
            return name.bundle
    raise RuntimeError("no bundle published yet")


def _audit_planted_store(server: Server, f: Findings, planted: dict[str, str]) -> None:
    """After the stop: verify and search end within their budgets and name every
    plant; a restart (the whole log listed, a self-audit) stays within its own."""
    vkey = server.stack.vkey()
    verify = run_child("verify", server.stack.store_url, "--vkey", vkey)
    f.check(verify.status == 0, f"verify exited {verify.status}: {verify.stdout[-300:]}")
    f.within("verify RSS", verify.peak_rss_mb, VERIFY_RSS_MB, "MB")
    summarised = "more foreign objects, not listed one by one" in verify.stdout
    for key, what in planted.items():  # named, or counted past the first 100 listed
        line = next((x for x in verify.stdout.splitlines() if key in x), "")
        named = "warning" in line and what in line
        f.check(named or (summarised and not line), f"verify does not report {key} ({what})")
    f.note(f"verify ended in {verify.seconds:.1f} s (a FIFO read hangs)")
    search = run_child("search", server.stack.store_url, "--vkey", vkey, "--status", "5xx")
    f.check(search.status == 0, f"search exited {search.status}")
    f.within("search RSS", search.peak_rss_mb, VERIFY_RSS_MB, "MB")
    f.within("restart RSS", restart(server, f), SERVER_RSS_MB, "MB")


def restart(server: Server, f: Findings) -> float:
    """Start the stopped server again (it lists the whole log, self-audits on start)
    and stop it; its peak RSS."""
    server.stack.start_server()
    assert server.stack.server is not None
    time.sleep(1.5)  # its self-audit on start, then one more
    rss = peak_rss_mb(server.stack.server.pid)
    f.check(server.stack.stop_server() == 0, "the restarted server did not stop cleanly")
    return rss


# --- The auditor's view --------------------------------------------------------------------


@attack(
    "terminal-escapes", AUDITOR,
    "entries whose path, request id, method or principal rewrite the auditor's terminal, "
    "shown by `search --format table` and `verify`",
    "test_search.py::test_table_output_escapes[*], test_display.py", "mesh",
)  # fmt: skip
def terminal_escapes(server: Server, f: Findings) -> None:
    with server.channel() as channel:
        for name, (changed, _) in A.TERMINAL_ESCAPES.items():
            fields = {"method": "GET", "path": "/ok", "rid": f"escape-{name}"} | changed
            principal = fields.pop("principal", "")
            msg = request_headers(
                fields["path"],
                fields["rid"],
                fields["method"],
                **({PEER_SAN: principal} if principal else {}),
            )
            exchange(channel, [msg, response_headers()])
    f.afterwards(lambda: _escapes_shown(server, f))


def _escapes_shown(server: Server, f: Findings) -> None:
    vkey = server.stack.vkey()
    table = run_child("search", server.stack.store_url, "--vkey", vkey, "--format", "table")
    verify = run_child("verify", server.stack.store_url, "--vkey", vkey)
    for command, out in (("search", table), ("verify", verify)):
        bad = raw_printable(out.stdout + out.stderr)
        f.check(not bad, f"{command} printed {len(bad)} raw control characters: {bad[:5]}")
    missing = [n for n, (_, shown) in A.TERMINAL_ESCAPES.items() if shown not in table.stdout]
    f.check(not missing, f"not shown escaped: {missing}")
    f.note(
        f"{len(A.TERMINAL_ESCAPES) - len(missing)} of {len(A.TERMINAL_ESCAPES)} shown "
        "escaped; raw control characters 0"
    )


@attack(
    "object-names-in-server-log", AUDITOR,
    "object names with ESC, CR, a newline and a bidi override (and not UTF-8) planted in the "
    "store: the server's log, SELF-AUDIT lines included, shows them escaped",
    "test_selfaudit.py::test_self_audit_lines_escape_control_characters_from_object_names",
    "mesh",
)  # fmt: skip
def object_names_in_server_log(server: Server, f: Findings) -> None:
    store = open_store(server.stack.store_url)
    A.plant_off_layout(store, server.stack.log_id, under="names/")

    def check() -> None:
        restart(server, f)  # the start lists the whole log and records names off the layout
        log = server.log_text()
        bad = raw_printable(log)
        f.check(not bad, f"{len(bad)} raw control characters in the server log: {bad[:5]}")
        named = [x for x in log.splitlines() if "\\x1b[2J" in x]
        f.check(bool(named), "no server log line names a planted object (nothing was tested)")
        f.note(f"{len(named)} log lines name planted objects, escaped; raw control characters 0")

    f.afterwards(check)


# --- Secrets -------------------------------------------------------------------------------


@attack(
    "secrets", SECRETS,
    f"the review's kinds of secrets ({len(A.SECRET_ROWS)} rows) through Envoy, both captures, "
    "under the default policy",
    "test_secrets_e2e.py, test_redact.py", "mesh",
)  # fmt: skip
def secrets(server: Server, f: Findings) -> None:
    statuses = {n: A.send_secret(server.stack.envoy_port, r) for n, r in A.SECRET_ROWS.items()}
    f.check(statuses.pop(A.ENVOY_REJECTS) in (400, 503), "Envoy took the fragment")
    f.check(set(statuses.values()) == {200}, f"statuses {set(statuses.values())}")
    _quiet(server)
    f.afterwards(lambda: _secrets_absent(server, f))


def _secrets_absent(server: Server, f: Findings) -> None:
    wal = tree_bytes(server.stack.workdir / "wal")
    published = tree_bytes(Path(server.stack.store_url))
    leaked = {}
    for name, row in A.SECRET_ROWS.items():
        problems = A.secret_problems(row, server.hash_key, wal, published)
        if problems:
            leaked[name] = problems
    f.check(not leaked, f"{len(leaked)} rows: {dict(list(leaked.items())[:3])}")
    f.note(
        f"{len(leaked)} of {len(A.SECRET_ROWS)} rows in clear (or not hashed) in {len(wal):,} "
        f"WAL bytes and {len(published):,} store bytes"
    )


# --- Keys ----------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


@attack(
    "retired-key-backdated", KEYS,
    "a retired key signs a made-up entry under a checkpoint whose time line is backdated "
    "(review 8), handed to `check-proof --keyring`",
    "test_retired_keys.py::test_retired_key_checkpoint_needs_evidence_from_outside_the_signer"
    "[*], test_made_up_entry_under_retired_key_refused_even_beside_a_trusted_state", "pristine",
)  # fmt: skip
def retired_key_backdated(w: Published, f: Findings) -> None:
    p, work = w.p, w.dir("retired")
    retired = datetime.now(UTC) - timedelta(days=1)
    origin = layout.origin_for("extproc-audit", p.log_id)
    backdated_ms = int((retired - timedelta(days=1)).timestamp() * 1000)
    proof = work / "made-up.tlog-proof"
    proof.write_text(A.backdated_proof(p.signer, origin, backdated_ms).to_text())
    successor = Signer.generate("e2e-audit-2027").verifier().to_text()
    ring = work / "audit.keyring"
    ring.write_text(f"{p.vkey} until={_iso(retired)}\n{successor} from={_iso(retired)}\n")
    checked = run_child("check-proof", str(proof), "--keyring", str(ring))
    f.check(
        checked.status == 1 and "retired" in checked.stdout + checked.stderr,
        f"check-proof exited {checked.status}: {(checked.stdout + checked.stderr)[-200:]}",
    )
    # The same forgery, were the key not retired: accepted (only the end date stops it).
    open_ring = work / "open.keyring"
    open_ring.write_text(f"{p.vkey}\n")
    control = run_child("check-proof", str(proof), "--keyring", str(open_ring))
    f.check(control.status == 0, f"the forgery is not well-formed: {control.stdout[-200:]}")
    f.note("exit 1 (retired, no outside evidence); the same file passes without the end date")


@attack(
    "second-writer-other-key", KEYS,
    "a serve under another key with the log's id and a fresh WAL; then a second history "
    "written anyway, and `verify` with the first key (review 9)",
    "test_writer_isolation.py::test_writer_under_another_key_with_a_fresh_wal_is_refused[*], "
    "test_second_history_under_another_key_never_changes_the_first_writers_verdict[*], "
    "test_serve_under_another_key_refuses_to_start", "pristine",
)  # fmt: skip
def second_writer_other_key(w: Published, f: Findings) -> None:
    p, work = w.p, w.dir("second-writer")
    root = work / "store"
    shutil.copytree(p.root, root)
    second = Signer.generate("audit-b")
    write_signer(work / "other.key", second)
    serve = run_child(
        "serve", "--store", str(root), "--key", str(work / "other.key"), "--log-id", p.log_id,
        "--wal-dir", str(work / "fresh-wal"), "--listen", "127.0.0.1:0", "--metrics-listen",
        "off", "--health-listen", "off", "--allow-no-object-lock", "--allow-unauthenticated",
        timeout=30,
    )  # fmt: skip
    f.check(
        serve.status == 2
        and "refusing to start" in serve.stderr
        and "Traceback" not in serve.stderr,
        f"serve exited {serve.status}: {serve.stderr[-200:]}",
    )
    store = LocalStore(root)
    checkpoints = {o.key for o in store.list("logs/") if "/checkpoints/" in o.key}
    unlisted: Any = A.Unlisted(store, checkpoints)
    write_log(
        unlisted,
        second,
        work / "wal-b",
        p.log_id,
        [{"kind": "request", "rid": f"second-{i}"} for i in range(6)],
        stop=True,
    )
    alone = run_child("verify", str(root), "--vkey", p.vkey)
    f.check(
        alone.status == 0 and "VALID" in alone.stdout,
        f"verify with the first key exited {alone.status}",
    )
    label = f"foreign objects signed by key {second.name}+{second.key_id.hex()}"
    f.check(label in alone.stdout, "the other key's objects are not reported")
    both = run_child("verify", str(root), "--vkey", p.vkey, "--vkey", second.verifier().to_text())
    f.check(both.status == 1 and "a second history" in both.stdout, "both keys: no fork reported")
    f.note("serve exit 2; first key still VALID (other key's objects: a warning); both keys: fork")


@attack(
    "world-readable-key", KEYS,
    "a signing key file others can read (it only got a warning)",
    "test_keys.py::test_world_readable_key_stops_serve_with_one_line", "cli",
)  # fmt: skip
def world_readable_key(lab: Lab, f: Findings) -> None:
    work = lab.dir("world-readable")
    key = work / "signing.key"
    write_signer(key, Signer.generate("open"))
    key.chmod(0o644)
    serve = run_child(
        "serve",
        "--store",
        str(work / "store"),
        "--key",
        str(key),
        "--allow-unauthenticated",
        timeout=30,
    )
    f.check(
        serve.status == 2 and f"chmod 600 {key}" in serve.stderr and serve.stderr.count("\n") == 1,
        f"serve exited {serve.status}: {serve.stderr[-200:]}",
    )
    f.note("exit 2, one line naming chmod 600")


# --- Hiding: tampering with the bucket -------------------------------------------------------


@attack(
    "tamper-published", HIDING,
    "overwrite, delete, swap, re-sign or insert published objects, then `verify`",
    "test_tamper.py::test_tampering_detected_local[*], test_tampering_detected_s3[*]",
    "pristine",
)  # fmt: skip
def tamper_published(w: Published, f: Findings) -> None:
    p = w.p
    rows = {k: TAMPERING[k] for k in QUICK_TAMPERING} if w.lab.quick else TAMPERING
    for name, tamper in rows.items():
        root = w.dir("tamper") / name
        shutil.copytree(p.root, root)
        expected = tamper.run(local_bucket(root), p)
        result = run_child("verify", str(root), "--vkey", p.vkey)
        want = 0 if tamper.warning else 1
        f.check(
            result.status == want and expected in result.stdout,
            f"{name}: verify exited {result.status} without {expected!r}",
        )
    f.note(f"{len(rows)} of {len(rows)} detected by verify")


QUICK_TAMPERING = ("bundle_byte_changed", "bundle_deleted", "checkpoint_signed_by_another_key")


@attack(
    "rollback-fork", HIDING,
    "roll a verified log back, or fork it with the leaked key, against `verify --state`",
    "test_tamper.py::test_checkpoint_rollback_against_state_detected, "
    "test_fork_against_state_detected", "pristine",
)  # fmt: skip
def rollback_fork(w: Published, f: Findings) -> None:
    p, work = w.p, w.dir("state")
    state = work / "state.json"
    first = run_child("verify", str(p.root), "--vkey", p.vkey, "--state", str(state))
    f.check(first.status == 0, f"the pristine log did not verify: {first.stdout[-200:]}")
    older = truncated(p, work / "older", checkpoint_sizes(p)[-2])
    rolled = run_child("verify", str(older), "--vkey", p.vkey, "--state", str(state))
    f.check(rolled.status == 1 and "rollback:" in rolled.stdout, "the rollback was not reported")
    fork_state = work / "fork-state.json"
    fork = forked(p, work / "fork")
    run_child("verify", str(fork), "--vkey", p.vkey, "--state", str(fork_state))
    found = run_child("verify", str(p.root), "--vkey", p.vkey, "--state", str(fork_state))
    f.check(found.status == 1 and "fork:" in found.stdout, "the fork was not reported")
    f.note("rollback: and fork: reported, exit 1, both signed checkpoints as evidence")


# --- Mistakes that look like success -------------------------------------------------------


@attack(
    "mistyped-store-url", MISTAKES,
    "`serve --store s3:/bucket/mesh` (review 9: published to ./s3:/bucket/mesh, no Object Lock)",
    "test_store_urls.py::test_mistyped_store_url_is_a_usage_error_in_every_command[*]", "cli",
)  # fmt: skip
def mistyped_store_url(lab: Lab, f: Findings) -> None:
    urls = A.MISTYPED_STORE_URLS if not lab.quick else {"one slash": "s3:/bucket/mesh"}
    for i, (name, url) in enumerate(urls.items()):
        cwd = lab.dir(f"typo-{i}")
        serve = run_child(
            "serve",
            "--store",
            url,
            "--key",
            "k",
            "--wal-dir",
            "w",
            "--allow-unauthenticated",
            timeout=30,
            cwd=cwd,
        )
        f.check(
            serve.status == 2 and serve.stderr.count("\n") == 1,
            f"{name}: serve exited {serve.status}: {serve.stderr[-200:]!r}",
        )
        f.check(not list(cwd.iterdir()), f"{name}: serve created {list(cwd.iterdir())}")
    f.note(f"{len(urls)} of {len(urls)}: exit 2, one line, nothing created")


@attack(
    "origin-prefix-newline", MISTAKES,
    "`--origin-prefix` with a newline (the server signed malformed checkpoints)",
    "test_checkpoint.py::test_malformed_origin_prefix_is_a_usage_error[*]", "cli",
)  # fmt: skip
def origin_prefix_newline(lab: Lab, f: Findings) -> None:
    work = lab.dir("origin")
    write_signer(work / "signing.key", Signer.generate("origin"))
    serve = run_child(
        "serve", "--store", str(work / "store"), "--key", str(work / "signing.key"),
        "--wal-dir", str(work / "wal"), "--origin-prefix", A.NEWLINE_ORIGIN_PREFIX,
        "--allow-unauthenticated", "--listen", "127.0.0.1:0", timeout=30,
    )  # fmt: skip
    f.check(
        serve.status == 2 and "origin prefix" in serve.stderr,
        f"serve exited {serve.status}: {serve.stderr[-200:]!r}",
    )
    f.check(not (work / "store").exists(), "a store was created")
    f.note("exit 2 (usage error), nothing signed")


# --- running -------------------------------------------------------------------------------


def run_world(lab: Lab, name: str, attacks: list[Attack]) -> list[Row]:
    """Set up one world, run its attacks in turn, tear it down, then run the checks
    that need the stopped server's published log."""
    findings = {a.id: Findings(timed=not lab.quick) for a in attacks}
    seconds = dict.fromkeys(findings, 0.0)
    world_problem = ""
    try:
        with WORLDS[name](lab) as world:
            for a in attacks:
                print(f"  {a.id}...", flush=True)
                started = time.monotonic()
                findings[a.id].guarded(partial(a.run, world, findings[a.id]))
                seconds[a.id] += time.monotonic() - started
    except Exception as e:
        world_problem = f"{name} world: {type(e).__name__}: {e}"
    for a in attacks:
        started = time.monotonic()
        for check in findings[a.id].later:
            findings[a.id].guarded(check)
        seconds[a.id] += time.monotonic() - started
        if world_problem:
            findings[a.id].problems.append(world_problem)
    return [_row(a, findings[a.id], seconds[a.id]) for a in attacks]


def _row(a: Attack, f: Findings, seconds: float) -> Row:
    return Row(
        a.id,
        a.family,
        a.title,
        not f.problems,
        "; ".join(f.budget),
        f.problems,
        round(seconds, 1),
        a.tests,
    )


def selected(only: str | None) -> list[Attack]:
    if not only:
        return list(ATTACKS)
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    chosen = [a for a in ATTACKS if any(fnmatch.fnmatch(a.id, p) for p in patterns)]
    if not chosen:
        raise SystemExit(f"no attack matches {only!r}: {', '.join(a.id for a in ATTACKS)}")
    return chosen


def run_all(lab: Lab, attacks: list[Attack]) -> list[Row]:
    rows: list[Row] = []
    for name in WORLDS:
        mine = [a for a in attacks if a.world == name]
        if mine:
            print(f"{name}:", flush=True)
            rows += run_world(lab, name, mine)
    order = {a.id: i for i, a in enumerate(ATTACKS)}
    return sorted(rows, key=lambda r: (FAMILIES.index(r.family), order[r.id]))


def print_table(rows: list[Row]) -> None:
    width = max(len(r.id) for r in rows)
    print(f"\n{'family':<38} {'attack':<{width}}  result  budget")
    print("-" * (58 + width))
    for r in rows:
        print(f"{r.family:<38} {r.id:<{width}}  {'held' if r.held else 'FAILED':<6}  {r.budget}")
        for problem in r.problems:
            print(f"{'':<38} {'':<{width}}          ! {problem}")


def machine(envoy: str | None) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    binary = envoy or processes.envoy_binary()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return {
        "git_head": git("rev-parse", "HEAD"),
        "uncommitted": git("status", "--porcelain", "extproc", "tests", "scripts").splitlines(),
        "nproc": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "envoy": version.stdout.split("version:")[-1].strip(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter load phases (CI)")
    parser.add_argument("--only", metavar="IDS", help="comma-separated attack ids (globs)")
    parser.add_argument(
        "--weaken",
        action="append",
        default=[],
        choices=sorted(WEAKENINGS),
        help="switch this defence off (its attack must then FAIL)",
    )
    parser.add_argument(
        "--envoy",
        metavar="BINARY",
        help="run every Envoy (the reporter, the server's sidecars) with this build, "
        "e.g. .mesh-lane/venv/bin/envoy, the oldest of the supported range "
        "(default: the venv's envoy)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows and the machine here")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the servers' logs, WALs and stores here (default: "
        "a temporary directory, removed at the end)",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the attacks and their tests (Markdown)"
    )
    args = parser.parse_args(argv)
    if args.list:
        print("| family | attack.py row | attack | tests |\n|---|---|---|---|")
        for a in sorted(ATTACKS, key=lambda a: FAMILIES.index(a.family)):
            print(f"| {a.family} | `{a.id}` | {a.title} | {a.tests} |")
        return 0
    # The servers and commands this script starts run this tree's code too.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.getenv("PYTHONPATH")]))
    facts = machine(args.envoy)
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        if args.workdir is None:
            work = Path(
                cleanup.enter_context(tempfile.TemporaryDirectory(prefix="extproc-attack-"))
            )
        else:
            work = args.workdir.resolve()
            work.mkdir(parents=True, exist_ok=False)
        make = cleanup.enter_context(stack_factory(work))
        if args.envoy:  # every stack's Envoy, in every world
            make = partial(make, envoy_bin=args.envoy)
        lab = Lab(work, args.quick, set(args.weaken), make, TestCA(work / "pki"), args.envoy)
        rows = run_all(lab, selected(args.only))
    elapsed = time.monotonic() - started
    print_table(rows)
    held = sum(r.held for r in rows)
    print(
        f"\n{held} of {len(rows)} attacks held in {elapsed:.0f} s "
        f"({'--quick' if args.quick else 'full run'}, {facts['nproc']} cores)"
    )
    if args.json:
        report = {"command": [sys.executable, *sys.argv], "quick": args.quick,
                  "weakened": sorted(args.weaken), "seconds": round(elapsed, 1),
                  "machine": facts, "rows": [asdict(r) for r in rows]}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if held == len(rows) else 1


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
