"""Server lifecycle: start, serve ext_proc + health + metrics, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extproc import __version__, metrics
from extproc.config import ServeConfig
from extproc.core import entry, layout
from extproc.core.display import escape
from extproc.core.fields import EVENT_HEARTBEAT, EVENT_START, KEY, MODE, VERSION
from extproc.errors import AuditError, ConfigError, LogUnavailableError, StorageError
from extproc.keys import load_signer
from extproc.log.appender import AuditLog
from extproc.log.publisher import Publisher, PublisherConfig
from extproc.log.selfaudit import ERRORED, FAILED, AuditOutcome, SelfAudit
from extproc.log.wal import WAL
from extproc.server.access import (
    ACCESS_LOG_SERVICE,
    AccessCapture,
    AccessLimits,
    AccessLogServicer,
    OutcomeMatcher,
)
from extproc.server.capture import Capturer
from extproc.server.identify import StreamIdentifier
from extproc.server.servicer import AuditServicer, IdleStreams, ReceiptReplies
from extproc.store import RetentionPolicy, open_store

if TYPE_CHECKING:
    from extproc.server.proofapi import ProofServer
    from extproc.witness.client import WitnessClient

log = logging.getLogger(__name__)

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
READINESS_SERVICES = ("", EXT_PROC_SERVICE, ACCESS_LOG_SERVICE)
# The liveness probe's gRPC health service name: SERVING from start to exit,
# whatever readiness says (fenced, --self-audit-fail-closed, draining): alive is
# not ready, and a restart would fix none of those.
LIVENESS_SERVICE = "liveness"
RSS_CHECK_INTERVAL = 5.0  # seconds between --max-rss-mb checks


def _split_host_port(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{what} {value!r} must be HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104


@dataclass
class Running:
    """What start() set up and drain() takes down."""

    wal: WAL
    audit_log: AuditLog
    publisher: Publisher
    ext_proc: AuditServicer
    access: AccessLogServicer
    server: grpc.aio.Server
    health_server: grpc.aio.Server | None
    proof_server: ProofServer | None
    idle_task: asyncio.Task[None]
    publish_task: asyncio.Task[None]
    heartbeat_task: asyncio.Task[None] | None
    audit_task: asyncio.Task[None] | None
    witness_task: asyncio.Task[None] | None = None


class AuditServer:
    """One writer process: one log id, one WAL, one ext_proc gRPC server."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        layout.validate_log_id(config.log_id)
        self.reporters = config.reporter_policy()
        self.identify = StreamIdentifier(self.reporters)  # both ingest services' streams
        self._credentials = _server_credentials(config)
        self.signer = load_signer(config.key)
        self.store = open_store(config.store)
        self.writer_id = secrets.token_hex(8)
        self.port = 0
        self.health_port = 0
        self.proof_port = 0
        self._stop = asyncio.Event()
        self.witnesses: WitnessClient | None = None  # serve --witness
        self._health = health.aio.HealthServicer()
        self._tasks: set[asyncio.Task[None]] = set()
        self._fenced_reason: str | None = None
        self._drain_delay = 0.0

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

    def _say_worm(self, retention: RetentionPolicy | None) -> None:
        """Say at start, and in a metric, whether what is published is write-once."""
        worm = self.store.supports_retention and retention is not None
        metrics.STORE_WORM.set(int(worm))
        if worm:
            return
        if not self.store.supports_retention:
            log.warning(
                "store %s is a local directory: no WORM (no Object Lock); anyone with file "
                "access can change or delete published objects. Development only: use "
                "s3://bucket/prefix with Object Lock for an audit log",
                escape(self.store.url),
            )
        else:
            log.warning(
                "store %s: objects are written without Object Lock retention "
                "(--allow-no-object-lock): anyone with write access to the bucket can "
                "overwrite or delete them. Development only",
                escape(self.store.url),
            )

    def stop(self, *, delay: bool = False) -> None:
        """Begin the drain; `delay`: first keep taking streams for --drain-delay
        while NOT_SERVING (SIGTERM: a rollout; SIGINT stops at once)."""
        self._drain_delay = self.config.drain_delay if delay else 0.0
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

    def _warn_if_no_hash_key(self) -> None:
        if self.config.redaction.hmac_key is None:
            log.warning(
                "no --hash-key: values not on the allow-list are stored as [redacted], and "
                "an auditor cannot tell which token was used (create a key with `hash-keygen`)"
            )

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
        self._fenced_reason = reason
        self._health_later(health_pb2.HealthCheckResponse.NOT_SERVING)

    def _health_later(self, status: int) -> None:
        task = asyncio.get_running_loop().create_task(self._set_health(status))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _audited(self, outcome: AuditOutcome) -> None:
        """--self-audit-fail-closed: NOT_SERVING while the published log has a hole
        the WAL cannot fill; SERVING again once a run finds it whole."""
        if not self.config.self_audit_fail_closed or outcome.result == ERRORED:
            return
        if self._fenced_reason is not None:
            return  # a fenced log stays NOT_SERVING
        self._health_later(
            health_pb2.HealthCheckResponse.NOT_SERVING
            if outcome.result == FAILED
            else health_pb2.HealthCheckResponse.SERVING
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
                    audit_log.append_nowait(entry.writer_event(EVENT_HEARTBEAT, self.writer_id))
                except LogUnavailableError as e:  # store down or fenced: the gap is the truth
                    log.warning("heartbeat not logged: %s", e)
            seen = audit_log.size

    def _watch_rss(self) -> asyncio.Task[None] | None:
        """--max-rss-mb: past it, drain as on SIGTERM (NOT_SERVING, the drain
        delay, the final checkpoint) and exit 0, for the orchestrator to start a
        fresh process. A planned restart instead of an OOM kill: grpc.aio leaks
        native memory per stream (docs/PERFORMANCE.md, "Soak")."""
        limit = self.config.max_rss_mb
        if limit <= 0:
            return None

        async def watch() -> None:
            while True:
                await asyncio.sleep(RSS_CHECK_INTERVAL)
                rss_mb = _rss_mb()
                if rss_mb > limit:
                    log.warning(
                        "resident memory %d MB is above --max-rss-mb %d: draining to restart "
                        "with a fresh process (gRPC's native memory, docs/PERFORMANCE.md)",
                        rss_mb,
                        limit,
                    )
                    self.stop(delay=True)
                    return

        return asyncio.get_running_loop().create_task(watch())

    async def _set_health(self, status: int) -> None:
        """Readiness: the whole server and each ingest service. Liveness
        (LIVENESS_SERVICE) is not touched: a fenced or draining server is alive."""
        for service in READINESS_SERVICES:
            await self._health.set(service, status)

    async def run(self) -> int:
        """start, serve until SIGTERM/SIGINT (or stop()), drain; the exit status."""
        quiet_closed_streams(asyncio.get_running_loop())
        running = await self.start()
        watchers = [t for t in (_memory_trace(), self._watch_rss()) if t is not None]
        await self._stop.wait()
        for task in watchers:
            task.cancel()
        return await self.drain(running)

    async def start(self) -> Running:
        """Open the WAL and the log, reconcile with the store, bind and start
        every listener and background task; SERVING once this returns."""
        cfg = self.config
        retention = self._retention()
        self._say_worm(retention)
        wal, audit_log = await self._open_log()
        publisher, self_audit = await self._publisher(wal, audit_log, retention)
        audit_log.append_nowait(
            entry.writer_event(
                EVENT_START,
                self.writer_id,
                {
                    VERSION: __version__,
                    MODE: cfg.mode,
                    KEY: f"{self.signer.name}+{self.signer.key_id.hex()}",
                },
            )
        )
        server = grpc.aio.server(options=cfg.grpc_options())
        idle = IdleStreams(cfg.stream_idle_timeout)
        ext_proc, access = self._servicers(server, audit_log, idle)
        health_server = self._listen(server)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: self.stop(delay=True))
        loop.add_signal_handler(signal.SIGINT, self.stop)

        proof_server = await self._start_proof_api()
        await server.start()
        if health_server is not None:
            await health_server.start()
        idle_task = loop.create_task(idle.run())
        publish_task = loop.create_task(publisher.run())
        heartbeat_task = (
            loop.create_task(self._heartbeat(audit_log)) if cfg.heartbeat_interval > 0 else None
        )
        audit_task = loop.create_task(self_audit.run()) if self_audit is not None else None
        witnesses = self.witnesses
        witness_task = loop.create_task(witnesses.run()) if witnesses is not None else None
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
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
        return Running(
            wal,
            audit_log,
            publisher,
            ext_proc,
            access,
            server,
            health_server,
            proof_server,
            idle_task,
            publish_task,
            heartbeat_task,
            audit_task,
            witness_task,
        )

    async def _open_log(self) -> tuple[WAL, AuditLog]:
        """The WAL, recovered, and the log that appends to it."""
        cfg = self.config
        wal = WAL(cfg.wal_dir / cfg.log_id)
        try:
            recovered = await asyncio.to_thread(wal.recover)
        except BaseException:
            wal.close()
            raise
        audit_log = AuditLog(wal, recovered, max_backlog_bytes=cfg.max_backlog_bytes)
        metrics.BACKLOG_BYTES.set_function(lambda: audit_log.backlog_bytes)
        metrics.BACKLOG_LIMIT.set(cfg.max_backlog_bytes)
        return wal, audit_log

    async def _publisher(
        self, wal: WAL, audit_log: AuditLog, retention: RetentionPolicy | None
    ) -> tuple[Publisher, SelfAudit | None]:
        """The publisher, reconciled with the store (if it answers), and its self-audit."""
        cfg = self.config
        witnessed = cfg.witness_policy()
        if witnessed is not None:
            from extproc.core.keyring import Keyring
            from extproc.witness.client import StoreProofs, WitnessClient

            policy, urls = witnessed
            own = Keyring.of(self.signer.verifier())
            self.witnesses = WitnessClient(
                policy,
                urls,
                self.store,
                cfg.log_id,
                StoreProofs(self.store, cfg.log_id, own),
                retention=retention,
            )
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
                tiles=not cfg.no_tiles,
            ),
            writer_id=self.writer_id,
            on_fenced=self._fenced,
            on_checkpoint=self.witnesses.submit if self.witnesses is not None else None,
        )
        if self.witnesses is not None:  # the tlog-tiles `checkpoint` carries the cosignatures
            self.witnesses.on_cosigned = publisher.tiles.publish_cosigned
        self_audit = None
        if cfg.self_audit_interval > 0:
            self_audit = SelfAudit(
                publisher, wal, interval=cfg.self_audit_interval, on_result=self._audited
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
        return publisher, self_audit

    def _servicers(
        self, server: grpc.aio.Server, audit_log: AuditLog, idle: IdleStreams
    ) -> tuple[AuditServicer, AccessLogServicer]:
        """ext_proc, the access-log service and health, added to the ingest server."""
        cfg = self.config
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
            ReceiptReplies(cfg.log_id, cfg.receipt_header) if cfg.receipts else None,
            identify=self.identify,
            idle=idle,
            response_phase=cfg.ext_proc_responses,
            outcomes=outcomes,
        )
        pb_grpc.add_ExternalProcessorServicer_to_server(ext_proc, server)
        access = AccessLogServicer(
            audit_log,
            AccessCapture(cfg.redaction, cfg.max_headers, cfg.max_header_bytes, self.reporters),
            self.identify,
            outcomes,
            AccessLimits(
                cfg.max_access_log_entries,
                cfg.max_access_log_rate,
                cfg.max_reporter_access_log_rate,
            ),
        )
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(access, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        return ext_proc, access

    def _listen(self, server: grpc.aio.Server) -> grpc.aio.Server | None:
        """Bind the ingest listener, the plaintext health listener (if any) and
        the metrics endpoint; the health server to start, if any."""
        cfg = self.config
        self.port = self._bind(server, cfg.listen, "--listen", self._credentials)
        health_server = None
        if cfg.health_listen and cfg.health_listen != "off":
            health_server = grpc.aio.server(options=[("grpc.so_reuseport", int(cfg.reuse_port))])
            health_pb2_grpc.add_HealthServicer_to_server(self._health, health_server)
            self.health_port = self._bind(health_server, cfg.health_listen, "--health-listen", None)
        self._warn_if_unauthenticated()
        self._warn_if_no_hash_key()
        if cfg.metrics_listen and cfg.metrics_listen != "off":
            from prometheus_client import start_http_server

            m_host, m_port = _split_host_port(cfg.metrics_listen, "--metrics-listen")
            try:
                start_http_server(m_port, m_host)
            except OSError as e:
                raise ConfigError(f"cannot serve metrics on {cfg.metrics_listen}: {e}") from e
        return health_server

    async def drain(self, r: Running) -> int:
        """Take the server down without failing a request that was routed to it.

        1. Readiness NOT_SERVING (the kubelet takes the pod out of the Service;
           callers' proxies drop the endpoint when istiod pushes), liveness stays
           SERVING.
        2. --drain-delay: new streams are still taken (on SIGTERM), so a proxy
           that has not heard yet is not refused.
        3. Admission ends (new ext_proc streams get UNAVAILABLE; access-log
           streams are still taken; answered ext_proc streams, waiting for
           Envoy's half-close, end with OK); --access-log-grace later, at least one
           Envoy flush interval, the outcome of the last admitted request has
           been sent: each access-log stream is ended right after its next
           batch. Then the listener closes; in-flight ext_proc streams finish.
        4. Everything acknowledged is published under a final checkpoint.
        Steps 3 and 4 share one deadline, --drain-timeout.
        """
        cfg = self.config
        loop = asyncio.get_running_loop()
        if r.heartbeat_task is not None:
            r.heartbeat_task.cancel()
        if r.audit_task is not None:
            r.audit_task.cancel()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._drain_delay > 0:
            log.info(
                "shutting down: NOT_SERVING, still taking streams for %gs (--drain-delay)",
                self._drain_delay,
            )
            await asyncio.sleep(self._drain_delay)
        log.info("shutting down: draining streams and publishing (up to %.0fs)", cfg.drain_timeout)
        # One deadline for the whole drain: streams, access-log flush, final
        # publication. An unreachable store costs the drain timeout, not a
        # multiple of it (measured before: 2x).
        deadline = loop.time() + cfg.drain_timeout

        def left() -> float:
            return max(0.0, deadline - loop.time())

        # Admission ends now: new ext_proc streams are refused, while the
        # listener stays up for access-log streams (Envoy opens one lazily, at
        # its next flush, if it has none). A grace later the outcome of the last
        # admitted request has been sent; each stream ends after its next batch.
        r.ext_proc.admitting = False
        # Streams whose exchange is complete (Envoy half-closes them when its
        # request ends) end with OK now: cancelled at the listener's stop they
        # could fail their requests, already forwarded, with Envoy's error status.
        released = r.ext_proc.release()
        if released:
            log.info("shutting down: ended %d answered ext_proc streams with OK", released)
        await asyncio.sleep(min(cfg.access_log_grace, left()))
        await r.access.close(min(cfg.access_log_grace, left()))
        await r.server.stop(left())
        r.idle_task.cancel()
        if r.health_server is not None:
            await r.health_server.stop(0)
        if r.proof_server is not None:
            await r.proof_server.stop(min(1.0, left()))
        await r.audit_log.flush()
        # The clean stop into the WAL first (a local fsync): should the store
        # stay down for the rest of the drain, the next start publishes it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(r.publisher.record_stop(), left())
        r.publisher.stop()
        try:
            await asyncio.wait_for(asyncio.shield(r.publish_task), left())
        except TimeoutError:
            r.publish_task.cancel()  # stuck retrying an unreachable store
            with contextlib.suppress(asyncio.CancelledError):
                await r.publish_task
        status = 0
        try:
            await asyncio.wait_for(r.publisher.close(), left())
            log.info(
                "final checkpoint published: log %s size %d",
                cfg.log_id,
                r.audit_log.published.size,
            )
        except (TimeoutError, AuditError) as e:
            status = 1
            reason = str(e) or (
                f"store unreachable for the drain timeout ({cfg.drain_timeout:g} s)"
                + (f": {r.publisher.last_error}" if r.publisher.last_error else "")
            )
            log.error(  # noqa: TRY400 - the message says it all; no traceback wanted
                "final publication incomplete (%s): %d entries stay in WAL %s and are "
                "published on the next start",
                reason,
                r.audit_log.durable_size - r.audit_log.published.size,
                r.wal.dir,
            )
        finally:
            r.audit_log.close()
        await self._last_witness_round(r, left())
        return status

    async def _last_witness_round(self, r: Running, within: float) -> None:
        """The witnesses get the final checkpoint, if the drain deadline leaves time."""
        if r.witness_task is None or self.witnesses is None:
            return
        r.witness_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await r.witness_task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.witnesses.flush(), within)


def _rss_mb() -> int:
    """This process's resident memory in MB (procfs: no syscall beyond a read)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") >> 20


def _memory_trace() -> asyncio.Task[None] | None:
    """EXTPROC_AUDIT_TRACEMALLOC=FRAMES (a diagnostic, scripts/soak.py
    --tracemalloc): trace allocations and log, every minute, what grew most
    since a snapshot two minutes in (after warm-up), with the gc counts."""
    frames = os.environ.get("EXTPROC_AUDIT_TRACEMALLOC", "")
    if not frames.isdigit() or int(frames) < 1:
        return None
    import gc
    import tracemalloc

    tracemalloc.start(int(frames))

    async def report() -> None:
        await asyncio.sleep(120)
        base = tracemalloc.take_snapshot()
        while True:
            await asyncio.sleep(60)
            top = tracemalloc.take_snapshot().compare_to(base, "traceback")[:8]
            log.warning(
                "tracemalloc: traced %.1f MB, gc counts %s, objects %d; "
                "top growth since warm-up:\n%s",
                tracemalloc.get_traced_memory()[0] / 1e6,
                gc.get_count(),
                len(gc.get_objects()),
                "\n".join(
                    f"  {stat.size_diff / 1e3:+.0f} kB {stat.count_diff:+d} blocks "
                    f"{stat.traceback.format()[-1].strip()}"
                    for stat in top
                ),
            )

    return asyncio.get_running_loop().create_task(report())


def _peer_gone(exc: BaseException | None, message: str = "") -> bool:
    """grpc.aio's error when it sends a stream's final status to a caller that
    already closed the stream (Envoy ends ext_proc streams itself after the last
    reply, or on a timeout): the exchange is over, nothing is lost."""
    text = f"{type(exc).__name__ if exc is not None else ''} {exc or ''} {message}"
    return "ExecuteBatchError" in text and "SendStatusFromServer" in text


class _PeerGoneFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if _peer_gone(exc, record.getMessage()):
            metrics.STREAMS_CLOSED_BY_PEER.inc()
            return False
        return True


def quiet_closed_streams(loop: asyncio.AbstractEventLoop) -> None:
    """Count, do not log with a traceback, the final status of a stream the
    caller already closed (grpc's logger, and the event loop's handler for an
    exception no task retrieved); every other error is reported as before."""
    for name in ("grpc._cython.cygrpc", "grpc.aio", "asyncio"):
        logging.getLogger(name).addFilter(_PeerGoneFilter())
    default = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _peer_gone(context.get("exception"), str(context.get("message", ""))):
            metrics.STREAMS_CLOSED_BY_PEER.inc()
            return
        if default is None:
            loop.default_exception_handler(context)
        else:
            default(loop, context)

    loop.set_exception_handler(handler)


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


def exit_after_serving(status: int) -> None:
    """Leave the process now if a store call is still stuck in a worker thread.

    boto3 calls cannot be interrupted, and Python would wait for them at exit
    (up to its retries and read timeouts) after the drain timeout has passed:
    the WAL holds everything they were writing, so nothing is lost by leaving.
    """
    import threading

    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
