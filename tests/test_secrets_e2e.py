"""The review's kinds of secrets (25 rows), through real Envoy, under the default policy.

Each row is one request sent through Envoy (enforce mode: ext_proc with the
response phase, and the access-log stream logging the same headers) into
`serve --hash-key`. After a clean stop, no row's secret, raw or as its
base64 or percent-encoded forms, is in any WAL file or any published
object; its name is (names stay visible), and so is its keyed hash (an
auditor holding the key can tell that it was used).
"""

from __future__ import annotations

import base64
import http.client
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from extproc.core.redact import stored_hash
from extproc.hashkey import write_hash_key
from tests.conftest import AuditStack, stack_factory

pytestmark = [pytest.mark.envoy]


@dataclass(frozen=True)
class Row:
    """One kind of secret: how it is sent, and what of it the log may show."""

    path: str
    secret: str
    headers: dict[str, str] = field(default_factory=dict)
    name: str = ""  # visible in the log (names stay)
    hashed: str = ""  # the exact value whose keyed hash the log holds ("" = the secret)


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJTRUMyMSJ9.c2lnU0VDMjE"
ROWS = {
    # query parameters
    "query-accessToken": Row("/q?page=2&accessToken=SEC01qat", "SEC01qat", name="accessToken"),
    "query-refreshToken": Row("/q?refreshToken=SEC02qrt", "SEC02qrt", name="refreshToken"),
    "query-session_token": Row("/q?session_token=SEC03qst", "SEC03qst", name="session_token"),
    "query-api_secret": Row("/q?api_secret=SEC04qas", "SEC04qas", name="api_secret"),
    "query-auth-token": Row("/q?auth-token=SEC05qat", "SEC05qat", name="auth-token"),
    "query-pass": Row("/q?pass=SEC06qps", "SEC06qps", name="pass"),
    "query-password-nul": Row("/q?password%00=SEC07qpn", "SEC07qpn", name="password%00"),
    "query-bare-part": Row("/q?page=1&SEC23qbp", "SEC23qbp", name="page=1"),
    # path and URL parameters, fragments, userinfo
    "path-jsessionid": Row("/cart;jsessionid=SEC08pjs/items", "SEC08pjs", name="jsessionid"),
    "referer-jsessionid": Row(
        "/r", "SEC09rjs", {"referer": "https://shop.example/cart;jsessionid=SEC09rjs"}, "referer"
    ),
    "location-token": Row("/redirect-token", "SEC10ltk", name="location"),
    "rejected-path-fragment": Row(
        "/z#access_token=SEC11frg", "SEC11frg", name='"fragment"', hashed="access_token=SEC11frg"
    ),
    # (Envoy drops a Referer with a fragment or userinfo: these ride in response headers.)
    "content-location-fragment": Row(
        "/fragment", "SEC24clf", name="content-location", hashed="access_token=SEC24clf"
    ),
    "location-userinfo": Row("/userinfo", "SEC25lui", name="location"),
    # headers no deny-list named
    **{
        f"header-{name}": Row("/h", secret, {name: secret}, name)
        for name, secret in (
            ("x_api_key", "SEC12hxak"),
            ("x-authorization", "SEC13hxa"),
            ("x-auth-key", "SEC14hak"),
            ("x-consul-token", "SEC15hct"),
            ("x-hasura-admin-secret", "SEC16hhs"),
            ("dd-api-key", "SEC17hdd"),
            ("x-session-token", "SEC18hst"),
            ("cf-access-jwt-assertion", "SEC19hcf"),
            ("x-jwt-assertion", "SEC20hjw"),
        )
    },
    "header-jwt-anywhere": Row("/h", JWT, {"x-debug-context": JWT}, "x-debug-context"),
    "www-authenticate": Row(
        "/challenge",
        "SEC22www",
        name="www-authenticate",
        hashed='error="invalid_token", error_description="SEC22www"',
    ),
}
# Response headers Envoy adds on these routes: both captures see them.
RESPONSES = {
    "/redirect-token": ("location", "https://client.example/next;token=SEC10ltk?page=1"),
    "/challenge": (
        "www-authenticate",
        'Bearer error="invalid_token", error_description="SEC22www"',
    ),
    "/fragment": ("content-location", "https://app.example/cb#access_token=SEC24clf"),
    "/userinfo": ("location", "https://SEC25lui@git.example/org/repo"),
}
LOGGED = sorted({n for r in ROWS.values() for n in r.headers} | {"referer", "user-agent"})


def forms(secret: str) -> list[bytes]:
    data = secret.encode()
    b64 = base64.b64encode(data)
    return [data, quote(secret, safe="").encode(), b64, b64.rstrip(b"="),
            base64.urlsafe_b64encode(data).rstrip(b"=")]  # fmt: skip


def patch_envoy(config: dict[str, Any]) -> None:
    """Log the rows' headers in the access log too, and answer two routes with
    the response headers of their rows (Envoy adds them: both captures see them)."""
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    typed = hcm["typed_config"]
    als = typed["access_log"][0]["typed_config"]
    als["additional_request_headers_to_log"] = LOGGED
    als["additional_response_headers_to_log"] = sorted({n for n, _ in RESPONSES.values()})
    routes = typed["route_config"]["virtual_hosts"][0]["routes"]
    app = routes[-1]["route"]
    for prefix, (name, value) in RESPONSES.items():
        routes.insert(
            0,
            {
                "match": {"prefix": prefix},
                "route": app,
                "response_headers_to_add": [{"header": {"key": name, "value": value}}],
            },
        )


@dataclass
class Run:
    stack: AuditStack
    key: bytes
    statuses: dict[str, int]
    wal: bytes
    published: bytes


def _send(port: int, row: Row) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", row.path, headers=row.headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    base = tmp_path_factory.mktemp("secrets")
    key_path = base / "hash.key"
    key = write_hash_key(key_path)
    with stack_factory(base) as make:
        stack = make(
            extra_args=[
                "--hash-key", str(key_path), "--ext-proc-responses", "--response-headers", "*",
            ],
            envoy_patch=patch_envoy,
        ).start()  # fmt: skip
        statuses = {name: _send(stack.envoy_port, row) for name, row in ROWS.items()}
        assert stack.stop_server() == 0, stack.server_log()
        wal = b"".join(
            p.read_bytes() for p in sorted((stack.workdir / "wal").rglob("*")) if p.is_file()
        )
        published = b"".join(
            p.read_bytes() for p in sorted(Path(stack.store_url).rglob("*")) if p.is_file()
        )
        yield Run(stack, key, statuses, wal, published)


@pytest.mark.parametrize("name", ROWS)
def test_secret_reaches_no_wal_file_and_no_published_object(run: Run, name: str) -> None:
    row = ROWS[name]
    assert run.wal and run.published
    for form in forms(row.secret):
        assert form not in run.wal, (name, form)
        assert form not in run.published, (name, form)
    # It was logged (so the test could fail), under its visible name, as a hash
    # an auditor holding the key can compute (`extproc-audit hash-value`).
    assert row.name.encode() in run.published, name
    assert stored_hash(run.key, (row.hashed or row.secret).encode()).encode() in run.published


def test_every_row_was_answered_and_the_log_verifies(run: Run) -> None:
    # Envoy refused the path (400); its local reply then reaches the ext_proc
    # response phase with no request phase, which the server refuses: the
    # filter's status_on_error, 503.
    assert run.statuses.pop("rejected-path-fragment") in (400, 503)
    assert set(run.statuses.values()) == {200}
    verify = run.stack.verify()
    assert verify.returncode == 0, verify.stdout + verify.stderr
