"""The lab of scripts/attack.py: the families and bounds, what an attack finds
(Findings, Row) and the registry of attacks, the measuring (metrics, RSS, the
event loop, honest load through Envoy, child commands), the worlds the attacks
run in, and the helpers the attacks share. The attacks are in attack_*.py by
family; the runner and its flags in scripts/attack.py.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
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
from dataclasses import dataclass, field
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
from extproc.attributes import LOCAL_SAN
from extproc.core import layout
from extproc.core.keyring import Keyring
from extproc.core.witness import WitnessedLogs
from extproc.envoyconf import Endpoint
from extproc.hashkey import write_hash_key
from extproc.keys import load_signer
from extproc.store import open_store
from extproc.witness.server import WitnessHTTPServer
from tests import attacks as A
from tests.conftest import AuditStack, read_entries
from tests.messages import ALS_METHOD, request_headers
from tests.pki import TestCA
from tests.tampering import Pristine, make_pristine
from tests.topology import (
    ALLOWED,
    APPEND,
    XFCC_SERVER_ARGS,
    audit_sidecar,
    client_credentials,
    envoy_client_tls,
    tls_server_args,
)
from tests.witnesses import fixed_cosigner, running_witness

ROOT = Path(__file__).resolve().parents[1]
# The families, as docs/THREATS.md names its sections.
FORGING = "Forging entries"
STALLING = "Stalling or stopping the server"
HIDING = "Hiding or changing what was published"
KEYS = "Keys"
WITNESSES = "Witnesses"
SECRETS = "Secrets"
AUDITOR = "The auditor's view"
MISTAKES = "Mistakes that look like success"
FAMILIES = (FORGING, STALLING, HIDING, KEYS, WITNESSES, SECRETS, AUDITOR, MISTAKES)

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


# Two witnesses of the witness world: w1 live, w2 down (nothing listens at its URL).
LIVE_WITNESS, DOWN_WITNESS = fixed_cosigner("w1.example", 71), fixed_cosigner("w2.example", 72)


class _Lines(logging.Handler):
    """A logger's messages, kept (the witness's log: its refusals are evidence)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class Witnessed:
    """A live serve whose checkpoints go to two witnesses, quorum 1."""

    stack: AuditStack
    metrics_port: int
    live: WitnessHTTPServer
    witness_log: list[str]  # the live witness's warnings (its refusals)
    lab: Lab

    @property
    def origin(self) -> str:
        return layout.origin_for("extproc-audit", self.stack.log_id)

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.metrics_port, name, **labels)

    def sizes(self, folder: str) -> list[int]:
        """The tree sizes of the log's `checkpoints` or `cosigned` objects."""
        store = open_store(self.stack.store_url)
        base = layout.log_prefix(store.prefix, self.stack.log_id)
        return sorted(int(o.key.rsplit("/", 1)[1]) for o in store.list(f"{base}{folder}/"))

    def verify(self, store_url: str) -> Child:
        """verify with the live witness's key, a quorum of 1."""
        key = LIVE_WITNESS.witness_key().to_text()
        return run_child("verify", store_url, "--vkey", self.stack.vkey(),
                         "--witness", key, "--witness-quorum", "1")  # fmt: skip


@contextlib.contextmanager
def witness_world(lab: Lab) -> Iterator[Witnessed]:
    """serve with --witness w1 (a real witness server, a thread of this script, its
    own state) and w2 (down), --witness-quorum 1. No Envoy: the writer's heartbeat
    entries make a checkpoint every 0.3 s."""
    stack = lab.make(log_id="pod-w")
    signed_by = Keyring.of(load_signer(stack.key_path).verifier())
    lines, logger = _Lines(), logging.getLogger("extproc.witness")
    logger.addHandler(lines)
    logger.propagate = False  # its refusals are read here, not printed over the table
    try:
        logs = WitnessedLogs([("extproc-audit/*", signed_by)])
        with running_witness(lab.dir("witness-w1"), LIVE_WITNESS, logs) as live:
            port = processes.free_port()
            down = (
                f"{DOWN_WITNESS.witness_key().to_text()}+http://127.0.0.1:{processes.free_port()}"
            )
            stack.extra_args = [
                "--metrics-listen", f"127.0.0.1:{port}", "--heartbeat-interval", "0.3",
                "--self-audit-interval", "0", "--witness-quorum", "1",
                "--witness", f"{LIVE_WITNESS.witness_key().to_text()}+{live.url}",
                "--witness", down, *lab.serve_args("witness"),
            ]  # fmt: skip
            stack.start_server()
            yield Witnessed(stack, port, live, lines.lines, lab)
            _stop(stack)  # while w1 listens: the final checkpoint is cosigned too
    finally:
        logger.removeHandler(lines)
        logger.propagate = True


WORLDS: dict[str, Callable[[Lab], contextlib.AbstractContextManager[Any]]] = {
    "cli": cli_world,
    "direct": direct_world,
    "append": append_world,
    "mesh": mesh_world,
    "load": partial(mesh_world, name="load"),
    "pristine": pristine_world,
    "witness": witness_world,
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


def destined(rid: str, served_as: str) -> list[Any]:
    """A request as the Envoy serving `served_as` reports it (its local certificate)."""
    return [request_headers("/orders", rid, **({LOCAL_SAN: served_as} if served_as else {}))]


def nothing_lost(f: Findings, server: Server, honest: Honest) -> None:
    """Afterwards: every honest request answered 2xx has its request entry and its outcome."""

    def check() -> None:
        entries = server.entries()
        requests = set(rids(entries, "request"))
        outcomes = {e["rid"] for e in entries if e["kind"] == "access" and "ref" in e}
        lost = [r for r in honest.request_ids if r not in requests or r not in outcomes]
        f.check(bool(honest.request_ids) and not lost, f"{len(lost)} honest requests lost")
        f.note(f"entries lost {len(lost)} of {len(honest.request_ids)}")

    f.afterwards(check)
