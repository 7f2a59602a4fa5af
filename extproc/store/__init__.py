"""Object stores: where bundles and checkpoints are written once, and read back.

A store argument, in every command that takes one, is exactly one of:

    s3://BUCKET[/PREFIX]   S3 (endpoint from AWS_ENDPOINT_URL), Object Lock: WORM
    file:///ABSOLUTE/DIR   a local directory
    DIR                    a local directory, given as a path

Anything that looks like a mistyped URL is a usage error, never a local
directory named after it: a scheme-like prefix other than `s3://` and
`file://` (`s3:/b`, `s3:b`, `S3://b`, `https://...`), or a first path
component that is a scheme name (`s3//b`, `s3/b`). A local directory whose
name looks like that is still reachable as `./NAME`. The one parser is
`parse_store_url`; nothing else looks inside a store URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from extproc.core.display import escape
from extproc.errors import ConfigError
from extproc.store.base import ObjectInfo, ObjectStore, Retention, RetentionPolicy

__all__ = [
    "ObjectInfo",
    "ObjectStore",
    "Retention",
    "RetentionPolicy",
    "StoreURL",
    "check_store_url",
    "open_store",
    "parse_store_url",
]

_FORMS = "s3://bucket/prefix, file:///dir or a directory path"
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")  # RFC 3986 3.1 scheme, then ':'
# First path components that are a URL missing its ':' or '//' (`s3//b`, `s3/b`).
_SCHEME_NAMES = frozenset({"s3", "s3a", "s3n", "file", "http", "https", "gs", "az", "minio"})
# S3 bucket names, legacy ones included (us-east-1 once allowed upper case and '_').
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_MAX_URL_CHARS = 4096


@dataclass(frozen=True)
class StoreURL:
    """A parsed store argument: an S3 bucket and prefix, or a local directory."""

    bucket: str | None  # None: a local directory
    prefix: str = ""  # S3 key prefix, without surrounding slashes
    path: Path | None = None  # the local directory

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None


def parse_store_url(url: str) -> StoreURL:
    """The store `url` names; ConfigError (one line, exit 2) for anything else."""
    shown = escape(url[:200])
    if not url:
        raise ConfigError(f"the store URL is empty: give {_FORMS}")
    if len(url) > _MAX_URL_CHARS:
        raise ConfigError(f"store URL {shown!r}... is longer than {_MAX_URL_CHARS} characters")
    if url != url.strip() or not url.isprintable():
        raise ConfigError(f"store URL {shown!r} has spaces around it or control characters")
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise ConfigError(f"store URL {shown!r} names no bucket (s3://bucket/prefix)")
        if not _BUCKET_RE.fullmatch(bucket):
            raise ConfigError(f"store URL {shown!r}: {escape(bucket)!r} is not an S3 bucket name")
        return StoreURL(bucket, prefix.strip("/"))
    if url.startswith("file://"):
        rest = url[len("file://") :]
        if not rest.startswith("/"):
            raise ConfigError(
                f"store URL {shown!r}: a file URL names an absolute path, file:///dir "
                "(three slashes); a relative directory is given as a path"
            )
        return StoreURL(None, path=Path(rest))
    scheme = _SCHEME_RE.match(url)
    first = url.split("/", 1)[0]
    if scheme is not None or (first.lower() in _SCHEME_NAMES and "/" in url):
        name = (scheme.group(1) if scheme else first).lower()
        what = (
            f"store URL {shown!r} looks like a mistyped {name}:// URL"
            if name in ("s3", "file")
            else f"unsupported store URL {shown!r}"
        )
        raise ConfigError(f"{what}: give {_FORMS} (a local directory of that name: ./NAME)")
    return StoreURL(None, path=Path(url))


def check_store_url(url: str, *, must_exist: bool = False) -> str:
    """`url` if it names a store (parse_store_url); raises ConfigError otherwise,
    before any client or file is made. (The tests' in-memory fake has no URL:
    they build MemoryStore themselves.)

    `must_exist` is for readers (verify, search, prove): a local store path
    that does not exist is a mistyped path, not an empty log. The writer
    creates its store directory, so it leaves this off.
    """
    parsed = parse_store_url(url)
    if must_exist and parsed.path is not None:
        path = parsed.path
        if not path.exists():
            raise ConfigError(f"store path {escape(str(path))} does not exist")
        if not path.is_dir():
            raise ConfigError(f"store path {escape(str(path))} is not a directory")
    return url


def open_store(url: str, *, must_exist: bool = False) -> ObjectStore:
    """The store `url` names (parse_store_url).

    `must_exist`: refuse a local directory that does not exist (readers).
    """
    check_store_url(url, must_exist=must_exist)
    parsed = parse_store_url(url)
    if parsed.bucket is not None:
        from extproc.store.s3 import S3Store

        return S3Store(parsed.bucket, parsed.prefix)
    from extproc.store.local import LocalStore

    assert parsed.path is not None
    return LocalStore(parsed.path)
