#!/usr/bin/env python3
"""The access-log floor: a no-op gRPC access-log service (ALS) sink.

grpc.aio + xds-protos, `envoy.service.accesslog.v3.AccessLogService`: reads
every StreamAccessLogs message and drops it, counting messages and HTTP
entries (one `len()` per message, nothing per entry), so that the benchmark
can check the floor's own loss against Envoy's `logs_written`. The counts are
written as JSON to `--stats` when the server stops (SIGTERM).

    python benchmarks/noop_als.py --listen 127.0.0.1:50051 [--stats counts.json] [--record msgs.bin]

`--record` also writes every message as received (a 4-byte big-endian length,
then the serialized StreamAccessLogsMessage): real Envoy batches for the
in-process benchmark `benchmarks/bench_access.py`.

`benchmarks/noop_extproc.py --als` hosts the same sink next to a no-op
ext_proc service on one port, as the audit server does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO

import grpc
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


class NoopAccessLog(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    def __init__(self, record: BinaryIO | None = None) -> None:
        self.record = record
        self.streams = 0
        self.messages = 0
        self.entries = 0  # HTTP access-log entries received
        self.tcp_entries = 0

    async def StreamAccessLogs(self, request_iterator: AsyncIterator[Any], context: Any) -> Any:
        self.streams += 1
        async for msg in request_iterator:
            self.messages += 1
            if self.record is not None:
                data = msg.SerializeToString()
                self.record.write(len(data).to_bytes(4, "big") + data)
            kind = msg.WhichOneof("log_entries")
            if kind == "http_logs":
                self.entries += len(msg.http_logs.log_entry)
            elif kind == "tcp_logs":
                self.tcp_entries += len(msg.tcp_logs.log_entry)
        return als_pb2.StreamAccessLogsResponse()

    def counts(self) -> dict[str, int]:
        return {
            "streams": self.streams,
            "messages": self.messages,
            "entries": self.entries,
            "tcp_entries": self.tcp_entries,
        }


async def run_server(listen: str, register: Callable[[grpc.aio.Server], None]) -> None:
    """Serve with health SERVING until SIGTERM/SIGINT."""
    server = grpc.aio.server()
    register(server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(listen)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Access-log streams never end on their own: the grace period cancels them.
    await server.stop(1)


def write_counts(stats: Path | None, sink: NoopAccessLog | None) -> None:
    if stats is not None and sink is not None:
        stats.write_text(json.dumps(sink.counts()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:50051")
    parser.add_argument("--stats", type=Path, default=None, help="write the counts here on exit")
    parser.add_argument("--record", type=Path, default=None, help="also write every message here")
    args = parser.parse_args()
    record = args.record.open("wb") if args.record else None
    sink = NoopAccessLog(record)
    asyncio.run(
        run_server(
            args.listen,
            lambda server: als_pb2_grpc.add_AccessLogServiceServicer_to_server(sink, server),
        )
    )
    write_counts(args.stats, sink)
    if record is not None:
        record.close()


if __name__ == "__main__":
    main()
