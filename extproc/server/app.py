"""Server lifecycle: start, serve ext_proc + health + metrics, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extproc import __version__
from extproc.core import entry, layout
from extproc.core.redact import RedactionPolicy
from extproc.errors import AuditError, BackpressureError, ConfigError, StorageError
from extproc.keys import load_signer
from extproc.log.appender import AuditLog
from extproc.log.publisher import Publisher, PublisherConfig
from extproc.log.wal import WAL
from extproc.server.access import (
    ACCESS_LOG_SERVICE,
    DEFAULT_OUTCOME_WINDOW,
    AccessCapture,
    AccessLogServicer,
    OutcomeMatcher,
)
from extproc.server.capture import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADERS,
    DEFAULT_RESPONSE_HEADERS,
    Capturer,
)
from extproc.server.reporters import ReporterPolicy, parse_networks
from extproc.server.servicer import AuditServicer, IdleStreams, ReceiptReplies
from extproc.store import RetentionPolicy, open_store

if TYPE_CHECKING:
    from extproc.server.proofapi import ProofServer

log = logging.getLogger(__name__)

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


@dataclass
class ServeConfig:
    store: str
    key: Path
    listen: str = "0.0.0.0:50051"
    log_id: str = "default"
    wal_dir: Path = Path("extproc-wal")
    mode: str = "enforce"
    origin_prefix: str = "extproc-audit"
    metrics_listen: str = "0.0.0.0:9464"
    bundle_max_entries: int = 10_000
    bundle_max_bytes: int = 16 << 20
    bundle_max_age: float = 0.5
    gzip: bool = False
    retention_days: int | None = None
    retention_mode: str = "COMPLIANCE"
    allow_no_object_lock: bool = False
    max_backlog_bytes: int = 128 << 20
    drain_timeout: float = 20.0
    heartbeat_interval: float = 60.0  # idle writer appends a heartbeat entry; 0: never
    reuse_port: bool = False  # set for `--workers`: several processes share the port
    redaction: RedactionPolicy = field(default_factory=RedactionPolicy)
    response_headers: frozenset[str] | None = DEFAULT_RESPONSE_HEADERS  # None: all
    proof_listen: str = "off"  # live proof API address (docs/PROOFS.md); off by default
    receipt_header: str | None = None  # enforce mode: set this response header; None: off
    # Who may report (server/reporters.py, docs/THREATS.md).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    trust_xfcc_from: tuple[str, ...] = ()
    xfcc_by: str | None = None
    allow_reporters: tuple[str, ...] = ()
    reporter_is_destination: str = "off"
    health_listen: str = "off"  # plaintext gRPC health only (probes of a TLS listener)
    # Cost per caller, bounded before any work (docs/THREATS.md).
    max_message_bytes: int = 1 << 20
    max_headers: int = DEFAULT_MAX_HEADERS
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_streams_per_connection: int = 100
    max_connection_age: float = 1800.0  # seconds; 0: never
    stream_idle_timeout: float = 300.0  # seconds; 0: never
    # ext_proc: wait for response headers and log a `response` entry (two-phase
    # filter config, no access-log service); receipts imply it.
    ext_proc_responses: bool = False
    outcome_window: float = DEFAULT_OUTCOME_WINDOW  # seconds a request waits for its outcome

    @property
    def unix_socket(self) -> str | None:
        return self.listen[len("unix:") :] if self.listen.startswith("unix:") else None

    def reporter_policy(self) -> ReporterPolicy:
        tls = (self.tls_cert, self.tls_key, self.client_ca)
        if any(tls) and not all(tls):
            raise ConfigError(
                "--tls-cert, --tls-key and --client-ca go together: the server's certificate "
                "and key, and the CA that signs the reporters' client certificates"
            )
        if all(tls) and self.trust_xfcc_from:
            raise ConfigError("--trust-xfcc-from is for a plaintext listener behind a sidecar")
        transport = "tls" if all(tls) else "unix" if self.unix_socket is not None else "plain"
        return ReporterPolicy(
            transport=transport,
            unix_path=self.unix_socket or "",
            trust_xfcc_from=parse_networks(self.trust_xfcc_from, "--trust-xfcc-from"),
            xfcc_by=self.xfcc_by,
            allow=self.allow_reporters,
            destination=self.reporter_is_destination,
        )

    def grpc_options(self) -> list[tuple[str, int]]:
        """Per-connection bounds and keepalive for the ingest listener."""
        options = [
            # SO_REUSEPORT only when asked: otherwise a second server on the same
            # port would silently share it instead of failing to start.
            ("grpc.so_reuseport", int(self.reuse_port)),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            # Find dead peers; accept Envoy's own keepalive pings (every 30 s,
            # envoyconf.py) instead of answering them with GOAWAY too_many_pings.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 2),
        ]
        if self.max_connection_age > 0:
            # New streams move to a new connection (load spreads after scale-out);
            # streams in flight finish on the old one (no grace limit).
            options.append(("grpc.max_connection_age_ms", int(self.max_connection_age * 1000)))
        return options


def _split_host_port(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{what} {value!r} must be HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104


class AuditServer:
    """One writer process: one log id, one WAL, one ext_proc gRPC server."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        layout.validate_log_id(config.log_id)
        self.reporters = config.reporter_policy()
        self._credentials = _server_credentials(config)
        self.signer = load_signer(config.key)
        self.store = open_store(config.store)
        self.writer_id = secrets.token_hex(8)
        self.port = 0
        self.health_port = 0
        self.proof_port = 0
        self._stop = asyncio.Event()
        self._health = health.aio.HealthServicer()
        self._tasks: set[asyncio.Task[None]] = set()

    def _retention(self) -> RetentionPolicy | None:
        cfg = self.config
        default = self.store.check_writable(require_lock=not cfg.allow_no_object_lock)
        if cfg.retention_days is not None:
            return RetentionPolicy(cfg.retention_mode, cfg.retention_days)
        if default is None and self.store.supports_retention and not cfg.allow_no_object_lock:
            raise ConfigError(
                f"bucket of {self.store.url} has no default retention: pass --retention-days "
                "or set one with `extproc-audit init-bucket`"
            )
        return default

    def stop(self) -> None:
        self._stop.set()

    def _bind(
        self,
        server: grpc.aio.Server,
        listen: str,
        option: str,
        credentials: grpc.ServerCredentials | None,
    ) -> int:
        """Add a listening address (HOST:PORT or unix:PATH); the TCP port, 0 for a socket."""
        if listen.startswith("unix:"):
            # Group read/write only: the proxy reaches the socket through a shared
            # group, nobody else does. Set before bind: a chmod after would race.
            old = os.umask(0o117)
            try:
                return self._add_port(server, listen, option, credentials)
            finally:
                os.umask(old)
        host, port = _split_host_port(listen, option)
        return self._add_port(server, f"{host}:{port}", option, credentials)

    @staticmethod
    def _add_port(
        server: grpc.aio.Server,
        address: str,
        option: str,
        credentials: grpc.ServerCredentials | None,
    ) -> int:
        try:
            if credentials is None:
                port: int = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError as e:
            raise ConfigError(f"cannot listen on {address} ({option}): {e}") from e
        return port

    def _warn_if_unauthenticated(self) -> None:
        if self.reporters.authenticated:
            if not self.reporters.allow:
                log.warning("no --allow-reporter: every authenticated caller may write to the log")
            return
        host = _split_host_port(self.config.listen, "--listen")[0]
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            log.warning(
                "UNAUTHENTICATED ingestion on %s: anyone who reaches this port can write "
                "entries (each is marked unauthenticated). For production use --tls-cert/"
                "--tls-key/--client-ca, --trust-xfcc-from behind a sidecar, or --listen "
                "unix:PATH, with --allow-reporter",
                self.config.listen,
            )

    async def _start_proof_api(self) -> ProofServer | None:
        """The proof API on its own port, apart from ext_proc (docs/PROOFS.md)."""
        cfg = self.config
        if not cfg.proof_listen or cfg.proof_listen == "off":
            return None
        from extproc.server.proofapi import ProofServer, ProofServicer

        servicer = ProofServicer(self.store, cfg.log_id, self.signer.verifier())
        proof_server = ProofServer(servicer, reuse_port=cfg.reuse_port)
        host, port = _split_host_port(cfg.proof_listen, "--proof-listen")
        self.proof_port = await proof_server.start(host, port)
        return proof_server

    def _fenced(self, reason: str) -> None:
        # Keep answering (with 503s) so Envoy fails closed, but tell the
        # orchestrator this instance is not healthy.
        self._tasks.add(
            asyncio.get_running_loop().create_task(
                self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            )
        )

    async def _heartbeat(self, audit_log: AuditLog) -> None:
        """Append a `writer heartbeat` entry whenever a whole interval passed with none.

        It gets published under a checkpoint like any entry, so a running
        writer publishes at least once per interval: a longer silence in the
        checkpoints means the writer was down or could not publish, not that
        there was no traffic (docs/AUDITING.md, log status).
        """
        interval = self.config.heartbeat_interval
        seen = audit_log.size
        while True:
            await asyncio.sleep(interval)
            if audit_log.size == seen:
                try:
                    audit_log.append_nowait(entry.writer_event("heartbeat", self.writer_id))
                except BackpressureError as e:  # store down or fenced: the gap is the truth
                    log.warning("heartbeat not logged: %s", e)
            seen = audit_log.size

    async def _set_health(self, status: int) -> None:
        for service in ("", EXT_PROC_SERVICE, ACCESS_LOG_SERVICE):
            await self._health.set(service, status)

    async def run(self) -> int:
        cfg = self.config
        retention = self._retention()
        wal = WAL(cfg.wal_dir / cfg.log_id)
        try:
            recovered = await asyncio.to_thread(wal.recover)
        except BaseException:
            wal.close()
            raise
        audit_log = AuditLog(wal, recovered, max_backlog_bytes=cfg.max_backlog_bytes)
        loop = asyncio.get_running_loop()
        publisher = Publisher(
            audit_log,
            wal,
            self.store,
            self.signer,
            PublisherConfig(
                log_id=cfg.log_id,
                origin=layout.origin_for(cfg.origin_prefix, cfg.log_id),
                bundle_max_entries=cfg.bundle_max_entries,
                bundle_max_bytes=cfg.bundle_max_bytes,
                max_age=cfg.bundle_max_age,
                gzip=cfg.gzip,
                retention=retention,
            ),
            writer_id=self.writer_id,
            on_fenced=self._fenced,
        )
        try:
            # Before serving: a store that holds what this WAL did not write means
            # another writer on this log id. Refuse to start rather than fork.
            await publisher.reconcile()
        except StorageError as e:
            log.warning("store not reachable at startup (%s); publishing will retry", e)
        except BaseException:
            audit_log.close()
            raise
        audit_log.append_nowait(
            entry.writer_event(
                "start",
                self.writer_id,
                version=__version__,
                mode=cfg.mode,
                key=f"{self.signer.name}+{self.signer.key_id.hex()}",
            )
        )
        server = grpc.aio.server(options=cfg.grpc_options())
        idle = IdleStreams(cfg.stream_idle_timeout)
        outcomes = OutcomeMatcher(cfg.outcome_window)
        ext_proc = AuditServicer(
            audit_log,
            Capturer(
                cfg.redaction,
                cfg.response_headers,
                max_headers=cfg.max_headers,
                max_header_bytes=cfg.max_header_bytes,
            ),
            cfg.mode,
            ReceiptReplies(cfg.log_id, cfg.receipt_header) if cfg.receipt_header else None,
            reporters=self.reporters,
            idle=idle,
            response_phase=cfg.ext_proc_responses,
            outcomes=outcomes,
        )
        pb_grpc.add_ExternalProcessorServicer_to_server(ext_proc, server)
        access = AccessLogServicer(
            audit_log,
            AccessCapture(cfg.redaction, cfg.max_headers, cfg.max_header_bytes),
            ext_proc,
            outcomes,
        )
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(access, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self.port = self._bind(server, cfg.listen, "--listen", self._credentials)
        health_server = None
        if cfg.health_listen and cfg.health_listen != "off":
            health_server = grpc.aio.server(options=[("grpc.so_reuseport", int(cfg.reuse_port))])
            health_pb2_grpc.add_HealthServicer_to_server(self._health, health_server)
            self.health_port = self._bind(health_server, cfg.health_listen, "--health-listen", None)
        self._warn_if_unauthenticated()
        if cfg.metrics_listen and cfg.metrics_listen != "off":
            from prometheus_client import start_http_server

            m_host, m_port = _split_host_port(cfg.metrics_listen, "--metrics-listen")
            try:
                start_http_server(m_port, m_host)
            except OSError as e:
                raise ConfigError(f"cannot serve metrics on {cfg.metrics_listen}: {e}") from e
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

        proof_server = await self._start_proof_api()
        await server.start()
        if health_server is not None:
            await health_server.start()
        idle_task = loop.create_task(idle.run())
        publish_task = loop.create_task(publisher.run())
        heartbeat_task = (
            loop.create_task(self._heartbeat(audit_log)) if cfg.heartbeat_interval > 0 else None
        )
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving ext_proc (%s mode) on %s (reporters: %s), log %s, size %d, store %s, wal %s",
            cfg.mode,
            cfg.listen if self.port == 0 else f"{cfg.listen.rpartition(':')[0]}:{self.port}",
            self.reporters.transport if self.reporters.authenticated else "unauthenticated",
            cfg.log_id,
            audit_log.size,
            self.store.url,
            wal.dir,
        )
        await self._stop.wait()

        # Drain: refuse new work, let in-flight streams finish, then publish
        # everything acknowledged under a final checkpoint.
        log.info("shutting down: draining streams (up to %.0fs)", cfg.drain_timeout)
        await self._health.enter_graceful_shutdown()
        # Access-log streams never end on their own: give Envoy one flush
        # interval (0.2 s, envoyconf) and then some to deliver what it holds,
        # then end them, so the drain below waits only for ext_proc streams.
        await access.close(min(1.0, cfg.drain_timeout))
        await server.stop(cfg.drain_timeout)
        idle_task.cancel()
        if health_server is not None:
            await health_server.stop(0)
        if heartbeat_task is not None:
            heartbeat_task.cancel()
        if proof_server is not None:
            await proof_server.stop(1.0)
        await audit_log.flush()
        publisher.stop()
        try:
            await asyncio.wait_for(asyncio.shield(publish_task), cfg.drain_timeout)
        except TimeoutError:
            publish_task.cancel()  # stuck retrying an unreachable store
            with contextlib.suppress(asyncio.CancelledError):
                await publish_task
        status = 0
        try:
            await asyncio.wait_for(publisher.close(), cfg.drain_timeout)
            log.info(
                "final checkpoint published: log %s size %d",
                cfg.log_id,
                audit_log.published.size,
            )
        except (TimeoutError, AuditError) as e:
            status = 1
            log.error(  # noqa: TRY400 - the message says it all; no traceback wanted
                "final publication incomplete (%s): %d entries stay in WAL %s and are "
                "published on the next start",
                e or "store unreachable",
                audit_log.durable_size - audit_log.published.size,
                wal.dir,
            )
        finally:
            audit_log.close()
        return status


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from e


def _server_credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    """mTLS for the ingest listener: a client certificate from --client-ca is required."""
    if config.tls_cert is None or config.tls_key is None or config.client_ca is None:
        return None
    return grpc.ssl_server_credentials(
        [(_read(config.tls_key, "--tls-key"), _read(config.tls_cert, "--tls-cert"))],
        root_certificates=_read(config.client_ca, "--client-ca"),
        require_client_auth=True,
    )


def serve(config: ServeConfig) -> int:
    return asyncio.run(AuditServer(config).run())
