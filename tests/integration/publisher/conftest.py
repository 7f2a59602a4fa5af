"""The publisher tests' fixtures: the log's signer, and the store it
publishes to, in memory, on disk and on real S3."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.core.note import Signer
from extproc.store.base import ObjectStore
from extproc.store.local import LocalStore
from extproc.store.memory import MemoryStore
from extproc.store.s3 import S3Store
from tests.conftest import S3Server
from tests.publishing import PREFIX, RETENTION


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.generate("test-audit")


@pytest.fixture(
    params=[
        "memory",
        "local",
        pytest.param("moto", marks=pytest.mark.s3),
        pytest.param("localstack", marks=[pytest.mark.s3, pytest.mark.strict_s3]),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The publisher's store: in memory, on disk, and real S3 (moto, and
    LocalStack, which enforces Object Lock and If-None-Match as AWS does)."""
    if request.param == "memory":
        return MemoryStore(PREFIX)
    if request.param == "local":
        return LocalStore(tmp_path / "store", PREFIX)
    server: S3Server = request.getfixturevalue(request.param)
    bucket = server.new_bucket(days=RETENTION.days)
    return S3Store(bucket, PREFIX, client=server.s3())
