"""Server lifecycle: start, serve ext_proc + health + metrics, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
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
from extproc.server.capture import DEFAULT_RESPONSE_HEADERS, Capturer
from extproc.server.servicer import AuditServicer, ReceiptReplies
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
        self.signer = load_signer(config.key)
        self.store = open_store(config.store)
        self.writer_id = secrets.token_hex(8)
        self.port = 0
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
        for service in ("", EXT_PROC_SERVICE):
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
            entry.writer_event("start", self.writer_id, version=__version__, mode=cfg.mode)
        )
        # SO_REUSEPORT only when asked: otherwise a second server on the same
        # port would silently share it instead of failing to start.
        server = grpc.aio.server(options=[("grpc.so_reuseport", int(cfg.reuse_port))])
        pb_grpc.add_ExternalProcessorServicer_to_server(
            AuditServicer(
                audit_log,
                Capturer(cfg.redaction, cfg.response_headers),
                cfg.mode,
                ReceiptReplies(cfg.log_id, cfg.receipt_header) if cfg.receipt_header else None,
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        host, port = _split_host_port(cfg.listen, "--listen")
        try:
            self.port = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as e:
            raise ConfigError(f"cannot listen on {cfg.listen}: {e}") from e
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
        publish_task = loop.create_task(publisher.run())
        heartbeat_task = (
            loop.create_task(self._heartbeat(audit_log)) if cfg.heartbeat_interval > 0 else None
        )
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving ext_proc (%s mode) on %s:%d, log %s, size %d, store %s, wal %s",
            cfg.mode,
            host,
            self.port,
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
        await server.stop(cfg.drain_timeout)
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


def serve(config: ServeConfig) -> int:
    return asyncio.run(AuditServer(config).run())
