"""`extproc-audit health`: ask a server's gRPC health service, for container probes.

The image's HEALTHCHECK runs this instead of shipping grpc_health_probe: the
image already has Python and grpcio-health-checking. Docker reads exit code 1
as "unhealthy" and reserves 2, so every non-SERVING answer, including an
unreachable server, is one outcome: not serving.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass(frozen=True)
class HealthStatus:
    """A health answer: `status` is the protocol's name or UNREACHABLE."""

    address: str
    service: str
    status: str
    detail: str = ""

    @property
    def serving(self) -> bool:
        return self.status == "SERVING"

    def to_text(self) -> str:
        name = self.service or "(server)"
        tail = f": {self.detail}" if self.detail else ""
        return f"{self.address} {name}: {self.status}{tail}"


def check_health(address: str, service: str = "", timeout: float = 2.0) -> HealthStatus:
    """One grpc.health.v1 Check call; never raises for a server that is down."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            if code == grpc.StatusCode.NOT_FOUND:
                return HealthStatus(address, service, "SERVICE_UNKNOWN")
            return HealthStatus(address, service, "UNREACHABLE", code.name if code else str(e))
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return HealthStatus(address, service, str(name))
