#!/usr/bin/env python3
"""The floor: a no-op ext_proc server (grpc.aio + xds-protos), nothing else.

Replies CONTINUE to request and response headers (blocking mode), or reads
and drops every message (--observe). The benchmark compares the audit
server against this, on the same machine, in the same run.

    python benchmarks/noop_extproc.py --listen 127.0.0.1:50051 [--observe]
        [--close-after-response | --close-after-request] [--als [--stats FILE]]

`--close-after-request` ends the stream after the request-headers reply, as
the audit server does when Envoy sends request headers only (response SKIP);
`--als` also hosts the no-op access-log sink of `benchmarks/noop_als.py` on
the same port (its counts go to `--stats` on exit).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from noop_als import NoopAccessLog, run_server, write_counts

_CONTINUE = {
    "request_headers": pb.ProcessingResponse(request_headers=pb.HeadersResponse()),
    "response_headers": pb.ProcessingResponse(response_headers=pb.HeadersResponse()),
}


class NoopProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(
        self, observe: bool, close_after_response: bool = False, close_after_request: bool = False
    ) -> None:
        self.observe = observe
        self.close_after_response = close_after_response
        self.close_after_request = close_after_request

    async def Process(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for msg in request_iterator:
            kind = msg.WhichOneof("request")
            if not self.observe:
                yield _CONTINUE[kind]
            if self.close_after_request and kind == "request_headers":
                return  # one round trip: Envoy counts the processing complete
            if self.close_after_response and kind == "response_headers":
                return  # end the stream ourselves: no cancel from Envoy (PERFORMANCE.md)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", default="127.0.0.1:50051")
    parser.add_argument("--observe", action="store_true", help="never reply (observability mode)")
    parser.add_argument(
        "--close-after-response",
        action="store_true",
        help="end the stream after the response headers instead of waiting for Envoy",
    )
    parser.add_argument(
        "--close-after-request",
        action="store_true",
        help="end the stream after the request-headers reply (Envoy sends request headers only)",
    )
    parser.add_argument(
        "--als", action="store_true", help="also host the no-op access-log sink (noop_als.py)"
    )
    parser.add_argument("--stats", type=Path, default=None, help="write the sink's counts here")
    args = parser.parse_args()
    processor = NoopProcessor(args.observe, args.close_after_response, args.close_after_request)
    sink = NoopAccessLog() if args.als else None

    def register(server: grpc.aio.Server) -> None:
        pb_grpc.add_ExternalProcessorServicer_to_server(processor, server)
        if sink is not None:
            als_pb2_grpc.add_AccessLogServiceServicer_to_server(sink, server)

    asyncio.run(run_server(args.listen, register))
    write_counts(args.stats, sink)


if __name__ == "__main__":
    main()
