#!/usr/bin/env python3
"""The floor: a no-op ext_proc server (grpc.aio + xds-protos), nothing else.

Replies CONTINUE to request and response headers (blocking mode), or reads
and drops every message (--observe). The benchmark compares the audit
server against this, on the same machine, in the same run.

    python benchmarks/noop_extproc.py --listen 127.0.0.1:50051 [--observe] [--close-after-response]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

_CONTINUE = {
    "request_headers": pb.ProcessingResponse(request_headers=pb.HeadersResponse()),
    "response_headers": pb.ProcessingResponse(response_headers=pb.HeadersResponse()),
}


class NoopProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, observe: bool, close_after_response: bool = False) -> None:
        self.observe = observe
        self.close_after_response = close_after_response

    async def Process(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for msg in request_iterator:
            kind = msg.WhichOneof("request")
            if not self.observe:
                yield _CONTINUE[kind]
            if self.close_after_response and kind == "response_headers":
                return  # end the stream ourselves: no cancel from Envoy (PERFORMANCE.md)


async def serve(listen: str, observe: bool, close_after_response: bool) -> None:
    server = grpc.aio.server()
    processor = NoopProcessor(observe, close_after_response)
    pb_grpc.add_ExternalProcessorServicer_to_server(processor, server)
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
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:50051")
    parser.add_argument("--observe", action="store_true", help="never reply (observability mode)")
    parser.add_argument(
        "--close-after-response",
        action="store_true",
        help="end the stream after the response headers instead of waiting for Envoy",
    )
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.observe, args.close_after_response))


if __name__ == "__main__":
    main()
