"""Generated gRPC/protobuf modules of protos/ (scripts/gen_protos.py): do not edit."""
