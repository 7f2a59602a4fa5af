"""Object stores: where bundles and checkpoints are written once, and read back."""

from __future__ import annotations

from pathlib import Path

from extproc.errors import ConfigError
from extproc.store.base import ObjectInfo, ObjectStore, Retention, RetentionPolicy

__all__ = [
    "ObjectInfo",
    "ObjectStore",
    "Retention",
    "RetentionPolicy",
    "check_store_url",
    "open_store",
]


def check_store_url(url: str, *, must_exist: bool = False) -> str:
    """`url` if it names a store: `s3://bucket/prefix`, `file:///dir` or a path;
    raises ConfigError otherwise, before any client or file is made. (The
    tests' in-memory fake has no URL: they build MemoryStore themselves.)

    `must_exist` is for readers (verify, search, prove): a local store path
    that does not exist is a mistyped path, not an empty log. The writer
    creates its store directory, so it leaves this off.
    """
    if not url:
        raise ConfigError("the store URL is empty: give s3://bucket/prefix or a directory")
    if url.startswith("s3://"):
        bucket = url[len("s3://") :].partition("/")[0]
        if not bucket:
            raise ConfigError(f"store URL {url!r} names no bucket (s3://bucket/prefix)")
        return url
    if "://" in url and not url.startswith("file://"):
        raise ConfigError(f"unsupported store URL {url!r}: use s3://bucket/prefix or a directory")
    if must_exist:
        path = Path(url.removeprefix("file://"))
        if not path.exists():
            raise ConfigError(f"store path {path} does not exist")
        if not path.is_dir():
            raise ConfigError(f"store path {path} is not a directory")
    return url


def open_store(url: str, *, must_exist: bool = False) -> ObjectStore:
    """`s3://bucket/prefix` (endpoint from AWS_ENDPOINT_URL), `file:///dir` or a path.

    `must_exist`: refuse a local directory that does not exist (readers).
    """
    check_store_url(url, must_exist=must_exist)
    if url.startswith("s3://"):
        from extproc.store.s3 import S3Store

        bucket, _, prefix = url[len("s3://") :].partition("/")
        return S3Store(bucket, prefix.strip("/"))
    from extproc.store.local import LocalStore

    return LocalStore(Path(url.removeprefix("file://")))
