"""extproc-audit: an immutable, verifiable audit log for Envoy/Istio meshes."""

__version__ = "0.1.0"
