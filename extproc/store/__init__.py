"""Object stores: where bundles and checkpoints are written once, and read back."""

from __future__ import annotations

from pathlib import Path

from extproc.errors import ConfigError
from extproc.store.base import ObjectInfo, ObjectStore, Retention, RetentionPolicy

__all__ = ["ObjectInfo", "ObjectStore", "Retention", "RetentionPolicy", "open_store"]


def open_store(url: str) -> ObjectStore:
    """`s3://bucket/prefix` (endpoint from AWS_ENDPOINT_URL), `file:///dir` or a path."""
    if url.startswith("s3://"):
        from extproc.store.s3 import S3Store

        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise ConfigError(f"store URL {url!r} names no bucket")
        return S3Store(bucket, prefix.strip("/"))
    if url.startswith("memory://"):
        from extproc.store.memory import MemoryStore

        return MemoryStore()
    if "://" in url and not url.startswith("file://"):
        raise ConfigError(f"unsupported store URL {url!r}: use s3://bucket/prefix or a directory")
    from extproc.store.local import LocalStore

    return LocalStore(Path(url.removeprefix("file://")))
