"""The audit service's names in the mesh, shared by the manifests
(scripts/render_istio.py) and the alerts (scripts/istio_alerts.py)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ISTIO = ROOT / "istio"

NAMESPACE = "extproc-audit"
SERVICE = "extproc-audit"
GRPC_PORT = 50051
SERVICE_HOST = f"{SERVICE}.{NAMESPACE}.svc.cluster.local"
# Istio names the outbound cluster of a Service port this way; a proxy has it as
# soon as the Service exists (and a Sidecar resource, if any, lets it see it).
OUTBOUND_CLUSTER = f"outbound|{GRPC_PORT}||{SERVICE_HOST}"
PART_OF = {"app.kubernetes.io/part-of": "extproc-audit"}
