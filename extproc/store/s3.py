"""S3 store with Object Lock: every object written once, retained, checksummed.

The endpoint comes from boto3's standard configuration (AWS_ENDPOINT_URL,
AWS_ENDPOINT_URL_S3, profiles), so AWS, MinIO, LocalStack and moto all work.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from extproc.errors import (
    ConfigError,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageError,
)
from extproc.store.base import (
    CONFIRMED,
    DEFAULT_READ_LIMIT,
    DIFFERENT,
    MISSING,
    Confirmation,
    ObjectInfo,
    ObjectLockInfo,
    ObjectVersion,
    Retention,
    RetentionPolicy,
    VersionedStore,
    confirmation,
)

# S3 answers a lost If-None-Match race with 412, or 409 while a conflicting
# upload is still in flight.
_EXISTS_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


_CHUNK = 1 << 20


def _read_capped(key: str, response: dict[str, Any], limit: int) -> bytes:
    """The body of a GetObject response, refused past `limit` bytes: by its
    Content-Length before reading, and while reading (a length that lied)."""
    body = response["Body"]
    try:
        size = response.get("ContentLength")
        if isinstance(size, int) and size > limit:
            raise ObjectTooLargeError(key, limit, size)
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            chunk: bytes = body.read(min(_CHUNK, limit + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > limit:
            raise ObjectTooLargeError(key, limit)
        return b"".join(chunks)
    finally:
        body.close()


def s3_client() -> Any:
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    config = Config(
        region_name=region,
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=20,
        # Checksums only where we ask for them (we send SHA-256 ourselves).
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    try:
        return boto3.client("s3", config=config)
    except ValueError as e:  # botocore: "Invalid endpoint: ..."
        variable = next(
            (v for v in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") if os.environ.get(v)), None
        )
        where = f"{variable}={os.environ[variable]!r}" if variable else "the S3 endpoint"
        raise ConfigError(
            f"{where} is not a valid endpoint URL (e.g. https://s3.us-east-1.amazonaws.com "
            f"or http://127.0.0.1:9000): {e}"
        ) from None
    except BotoCoreError as e:  # no region, a broken profile, ...
        raise ConfigError(f"cannot configure the S3 client: {e}") from None


def _default_rule(config: dict[str, Any] | None) -> RetentionPolicy | None:
    """The DefaultRetention rule of an Object Lock configuration, if it has one."""
    rule = (config or {}).get("Rule", {}).get("DefaultRetention")
    if not rule:
        return None
    days = int(rule.get("Days") or 365 * rule.get("Years", 0))
    return RetentionPolicy(str(rule["Mode"]), days)


class S3Store:
    supports_retention = True

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        if not bucket:
            raise ConfigError("no bucket name: give s3://BUCKET or s3://BUCKET/PREFIX")
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._s3 = client if client is not None else s3_client()

    def _error(self, action: str, key: str, e: Exception) -> StorageError:
        detail = _code(e) if isinstance(e, ClientError) else type(e).__name__
        return StorageError(f"s3 {action} s3://{self.bucket}/{key} failed: {detail}: {e}")

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Turn botocore errors into ours; none escapes, each names bucket and key."""
        try:
            yield
        except ClientError as e:
            code = _code(e)
            if action == "put" and code in _EXISTS_CODES:
                raise ObjectExistsError(key) from e
            if action in ("get", "head") and code in _MISSING_CODES:
                raise ObjectNotFoundError(key) from e
            if code == "NoSuchBucket":
                raise ConfigError(f"bucket {self.bucket} does not exist") from e
            raise self._error(action, key, e) from e
        except BotoCoreError as e:
            raise self._error(action, key, e) from e

    def lock_configuration(self) -> dict[str, Any] | None:
        try:
            response = self._s3.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as e:
            code = _code(e)
            if code == "ObjectLockConfigurationNotFoundError":
                return None
            if code in ("NoSuchBucket", "404"):
                raise ConfigError(f"bucket {self.bucket} does not exist") from e
            raise self._error("get-object-lock-configuration", "", e) from e
        except BotoCoreError as e:
            raise self._error("get-object-lock-configuration", "", e) from e
        config: dict[str, Any] = response.get("ObjectLockConfiguration", {})
        return config if config.get("ObjectLockEnabled") == "Enabled" else None

    def check_writable(self, *, require_lock: bool) -> RetentionPolicy | None:
        """Refuse a bucket without Object Lock; return its default retention rule."""
        config = self.lock_configuration()
        if config is None:
            if require_lock:
                raise ConfigError(
                    f"bucket {self.bucket} has no Object Lock: published logs could be "
                    "overwritten or deleted. Create a bucket with Object Lock (`extproc-audit "
                    "init-bucket s3://NEW-BUCKET --retention-days DAYS --mode COMPLIANCE`), or "
                    "pass --allow-no-object-lock for development"
                )
            return None
        return _default_rule(config)

    def default_retention(self) -> RetentionPolicy | None:
        """The bucket's default Object Lock retention (None: no Object Lock or no rule)."""
        return _default_rule(self.lock_configuration())

    def versioned(self) -> VersionedStore | None:
        # Object Lock needs versioning; a bucket without it lists one "null"
        # version per key, so reading versions is right on every bucket.
        return self

    def put_replace(self, key: str, data: bytes, retention: Retention | None) -> None:
        self.put_once(key, data, retention, replace=True)

    def put_once(
        self, key: str, data: bytes, retention: Retention | None, *, replace: bool = False
    ) -> None:
        """Create `key` (If-None-Match: *); `replace`: put_replace's plain PUT, a new version."""
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": data,
            "ChecksumAlgorithm": "SHA256",
            "ChecksumSHA256": checksum,
        }
        if not replace:
            args["IfNoneMatch"] = "*"
        if key.endswith(".jsonl"):
            args["ContentType"] = "application/x-ndjson"
        elif key.endswith(".gz"):
            args["ContentType"] = "application/gzip"
        elif "/tile/" in key:
            args["ContentType"] = "application/octet-stream"  # c2sp.org/tlog-tiles
        else:
            args["ContentType"] = "text/plain; charset=utf-8"
        if retention is not None:
            args["ObjectLockMode"] = retention.mode
            args["ObjectLockRetainUntilDate"] = retention.until
        with self._errors("put", key):
            self._s3.put_object(**args)

    def get(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        with self._errors("get", key):
            response = self._s3.get_object(Bucket=self.bucket, Key=key)
            return _read_capped(key, response, limit)

    def confirm(self, key: str, sha256: bytes) -> Confirmation:
        """HEAD with checksum mode: S3 returns the SHA-256 it stored with the put."""
        try:
            with self._errors("head", key):
                head = self._s3.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ObjectNotFoundError:
            return MISSING
        stored = head.get("ChecksumSHA256")
        if stored:
            want = base64.b64encode(sha256).decode()
            return CONFIRMED if stored == want else DIFFERENT
        # An S3 API without checksums: read the object back.
        try:
            return confirmation(self.get(key), sha256)
        except ObjectNotFoundError:
            return MISSING

    def list(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        args = {"StartAfter": start_after} if start_after else {}
        with self._errors("list", prefix):
            paginator = self._s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, **args):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"], int(obj["Size"]))

    def retention(self, key: str) -> Retention | None:
        # head_object, not get_object_retention: it works on every S3 API we
        # test against (moto's get_object_retention is broken).
        with self._errors("head", key):
            head = self._s3.head_object(Bucket=self.bucket, Key=key)
        mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
        if not mode or not until:
            return None
        return Retention(str(mode), until)

    def versions(self, prefix: str, start_after: str = "") -> Iterator[ObjectVersion]:
        """Every version and delete marker under `prefix`, oldest first per key.

        S3 lists a key's versions newest first; that order, not LastModified
        (which ties at one-second resolution on some servers), decides which
        version is the original.
        """
        found: dict[str, list[ObjectVersion]] = {}
        with self._errors("list-versions", prefix):
            paginator = self._s3.get_paginator("list_object_versions")
            # Keys after KeyMarker (AWS, LocalStack); moto 5.2 also drops the
            # first key after a marker that is not itself a key.
            args = {"KeyMarker": start_after} if start_after else {}
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, **args):
                for v in page.get("Versions", []):
                    found.setdefault(v["Key"], []).append(
                        ObjectVersion(
                            v["Key"],
                            str(v.get("VersionId") or "null"),
                            v.get("LastModified"),
                            int(v.get("Size", 0)),
                            str(v.get("ETag", "")),
                            is_latest=bool(v.get("IsLatest")),
                        )
                    )
                for m in page.get("DeleteMarkers", []):
                    found.setdefault(m["Key"], []).append(
                        ObjectVersion(
                            m["Key"],
                            str(m.get("VersionId") or "null"),
                            m.get("LastModified"),
                            delete_marker=True,
                            is_latest=bool(m.get("IsLatest")),
                        )
                    )
        for key in sorted(found):
            listed = found[key]
            real = [v for v in listed if not v.delete_marker][::-1]  # oldest first
            markers = [v for v in listed if v.delete_marker]
            yield from real
            yield from sorted(markers, key=lambda m: (m.last_modified is None, m.last_modified))

    def get_version(self, key: str, version_id: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        with self._errors("get", key):
            response = self._s3.get_object(Bucket=self.bucket, Key=key, VersionId=version_id)
            return _read_capped(key, response, limit)

    def lock_info(self, key: str, version_id: str | None = None) -> ObjectLockInfo:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        # "null" is the one version of an unversioned bucket (no Object Lock):
        # HEAD it plainly, some S3 servers refuse versionId=null there.
        if version_id is not None and version_id != "null":
            args["VersionId"] = version_id
        with self._errors("head", key):
            head = self._s3.head_object(**args)
        mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
        retention = Retention(str(mode), until) if mode and until else None
        return ObjectLockInfo(retention, head.get("LastModified"))

    def bucket_exists(self) -> bool:
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if _code(e) in ("404", "NoSuchBucket", "NotFound"):
                return False
            raise self._error("head-bucket", "", e) from e
        except BotoCoreError as e:
            raise self._error("head-bucket", "", e) from e
        return True

    def create_locked_bucket(self, mode: str, days: int) -> bool:
        """Create the bucket with Object Lock and a default retention; True if created.

        Idempotent on a bucket that already has Object Lock (its default
        retention is set to the one asked for).
        """
        created = False
        # Look first: us-east-1 answers CreateBucket on an existing bucket with
        # success, and some S3 servers would then switch Object Lock on.
        if not self.bucket_exists():
            args: dict[str, Any] = {"Bucket": self.bucket, "ObjectLockEnabledForBucket": True}
            region = self._s3.meta.region_name
            if region and region != "us-east-1":
                args["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                self._s3.create_bucket(**args)
            except ClientError as e:
                if _code(e) == "BucketAlreadyExists":
                    raise ConfigError(
                        f"bucket name {self.bucket} is taken by another account"
                    ) from e
                raise self._error("create-bucket", "", e) from e
            except BotoCoreError as e:
                raise self._error("create-bucket", "", e) from e
            created = True
        if self.lock_configuration() is None:
            raise ConfigError(
                f"bucket {self.bucket} exists without Object Lock; an audit log needs "
                "a bucket created with Object Lock (choose a new bucket name)"
            )
        try:
            self._s3.put_object_lock_configuration(
                Bucket=self.bucket,
                ObjectLockConfiguration={
                    "ObjectLockEnabled": "Enabled",
                    "Rule": {"DefaultRetention": {"Mode": mode, "Days": days}},
                },
            )
        except (ClientError, BotoCoreError) as e:
            raise self._error("put-object-lock-configuration", "", e) from e
        return created
