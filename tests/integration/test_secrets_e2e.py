"""The review's kinds of secrets (25 rows), through real Envoy, under the default policy.

Each row is one request sent through Envoy (enforce mode: ext_proc with the
response phase, and the access-log stream logging the same headers) into
`serve --hash-key`. After a clean stop, no row's secret, raw or as its
base64 or percent-encoded forms, is in any WAL file or any published
object; its name is (names stay visible), and so is its keyed hash (an
auditor holding the key can tell that it was used).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from extproc.hashkey import write_hash_key
from tests.attacks import (
    ENVOY_REJECTS,
    SECRET_ROWS,
    SECRET_SERVE_ARGS,
    patch_envoy_for_secrets,
    secret_problems,
    send_secret,
)
from tests.conftest import AuditStack, stack_factory
from tests.helpers import tree_bytes

pytestmark = [pytest.mark.envoy]


@dataclass
class Run:
    stack: AuditStack
    key: bytes
    statuses: dict[str, int]
    wal: bytes
    published: bytes


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    base = tmp_path_factory.mktemp("secrets")
    key_path = base / "hash.key"
    key = write_hash_key(key_path)
    with stack_factory(base) as make:
        stack = make(
            extra_args=["--hash-key", str(key_path), *SECRET_SERVE_ARGS],
            envoy_patch=patch_envoy_for_secrets,
        ).start()
        statuses = {name: send_secret(stack.envoy_port, row) for name, row in SECRET_ROWS.items()}
        assert stack.stop_server() == 0, stack.server_log()
        wal = tree_bytes(stack.workdir / "wal")
        published = tree_bytes(Path(stack.store_url))
        yield Run(stack, key, statuses, wal, published)


@pytest.mark.parametrize("name", SECRET_ROWS)
def test_secret_reaches_no_wal_file_and_no_published_object(run: Run, name: str) -> None:
    assert run.wal and run.published
    assert secret_problems(SECRET_ROWS[name], run.key, run.wal, run.published) == []


def test_every_row_was_answered_and_the_log_verifies(run: Run) -> None:
    # Envoy refused the path (400); its local reply then reaches the ext_proc
    # response phase with no request phase, which the server refuses: the
    # filter's status_on_error, 503.
    assert run.statuses.pop(ENVOY_REJECTS) in (400, 503)
    assert set(run.statuses.values()) == {200}
    verify = run.stack.verify()
    assert verify.returncode == 0, verify.stdout + verify.stderr
