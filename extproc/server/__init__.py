"""The ext_proc gRPC server: capture, back-pressure, lifecycle."""
