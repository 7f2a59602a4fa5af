"""Attack inputs: one definition of each, for the tests that hold an attack and
for scripts/attack.py, which throws the same bytes at a live server.

Grouped as docs/THREATS.md groups the attack families. What an attack does
with its input (and what it must find) lives in the test or in attack.py;
what it sends, plants or hands over lives here.
"""

from __future__ import annotations

import base64
import functools
import gzip
import http.client
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from envoy.config.core.v3 import base_pb2
from envoy.service.accesslog.v3 import als_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.core import entry, layout
from extproc.core.checkpoint import Checkpoint, sign_checkpoint
from extproc.core.merkle import inclusion_proof, leaf_hash, root_of
from extproc.core.note import Signer
from extproc.core.redact import stored_hash
from extproc.core.tlogproof import TlogProof
from extproc.store.base import ObjectInfo, ObjectStore, ObjectVersion
from extproc.store.local import LocalStore
from tests.messages import request_headers, response_headers
from tests.topology import ALLOWED, APPEND, AUDIT_SERVER_ID, SANITIZE

# --- Forging entries ---------------------------------------------------------------------

# The review's attack 1: a caller holding a valid mesh certificate sends its own
# XFCC naming an allowed reporter, ending in an unbalanced quote, so that a
# lenient reader swallows the element the own sidecar appends.
REVIEW_XFCC = f'By={AUDIT_SERVER_ID};URI={ALLOWED};x="'
# The element the own sidecar writes for an allowed reporter.
OWN_ELEMENT = f'By={AUDIT_SERVER_ID};Hash=ab12;Subject="";URI={ALLOWED}'
# A well-formed element naming an allowed reporter, written by the caller.
WELL_FORMED_FORGERY = f"By={AUDIT_SERVER_ID};URI={ALLOWED}"
# Through the own sidecar, the caller holding another identity's certificate:
# (sidecar mode, serve --xfcc-mode, the caller's header, the refusal's reason).
SIDECAR_ATTACKS = {
    "review_attack_append_forward": (APPEND, APPEND, REVIEW_XFCC, "xfcc_malformed"),
    # The shipped setting: the caller's header is replaced; its own identity is not allowed.
    "review_attack_sanitize_set": (SANITIZE, SANITIZE, REVIEW_XFCC, "not_allowed"),
    # A sidecar left at Istio's default while the server expects SANITIZE_SET.
    "forged_element_appended": (APPEND, SANITIZE, WELL_FORMED_FORGERY, "xfcc_foreign"),
}  # fmt: skip
# What an allowed reporter says about itself on an access-log stream, made up.
MADE_UP_NODE = "sidecar~10.9.9.9~ceo-laptop.admin~admin.svc.cluster.local"
MADE_UP_CLUSTER = "payments.prod"
MADE_UP_DESTINATION = "spiffe://test.mesh/ns/payments/sa/payments"
# The review's hand-made ProcessingRequest: a CEO's account deleted.
FORGED_PATH = "/admin/accounts/42"

# --- Stalling or stopping the server -----------------------------------------------------

HOSTILE_ENTRIES = 500_000  # the review's access-log message: 500,000 empty entries, 0.95 MiB
MANY_HEADERS = 60_000  # the review's ext_proc message: 60,000 headers


@functools.cache
def empty_entries_message(count: int) -> bytes:
    """The review's message: an identifier and `count` empty HTTP entries (2 bytes each)."""
    msg = als_pb2.StreamAccessLogsMessage()
    msg.identifier.node.id = "attacker"
    entries = msg.http_logs.log_entry
    for _ in range(count):
        entries.add()
    data: bytes = msg.SerializeToString()
    return data


@functools.cache
def many_headers_request(count: int, rid: str = "many-headers") -> bytes:
    """A request_headers message with `count` extra headers of 4-byte values
    (60,000 of them: 0.96 MB, under serve's default --max-message-bytes of 1 MiB)."""
    msg = request_headers("/many-headers", rid)
    extra = msg.request_headers.headers.headers
    for i in range(count):
        extra.append(base_pb2.HeaderValue(key=f"h{i:05d}", raw_value=b"0123"))
    data: bytes = msg.SerializeToString()
    return data


UNDECODABLE = b"\xff\xff\xff\xff garbage"  # not a protobuf message
# Streams out of order: (the messages, the gRPC status that ends that stream only).
HOSTILE_STREAMS = {
    "response_before_request": ([response_headers()], "FAILED_PRECONDITION"),
    "request_headers_twice": ([request_headers(), request_headers()], "INVALID_ARGUMENT"),
    "body_not_configured": (
        [request_headers(), pb.ProcessingRequest(request_body=pb.HttpBody(body=b"x"))],
        "UNIMPLEMENTED",
    ),
    "empty_message": ([pb.ProcessingRequest()], "INVALID_ARGUMENT"),
}
# `"²00".isdigit()` is True and int() takes it: each made a stream fail INTERNAL
# with a traceback. Stored as data: status null, status_raw as sent.
FORGED_STATUSES = ("²00", "２00", "20x")

# --- Hiding or changing what was published -----------------------------------------------

BOMB_EXPANDS_TO = 1 << 30  # the review's bomb: 1 MB of gzip, 1 GiB of zeros


@functools.cache
def gzip_bomb(size: int = BOMB_EXPANDS_TO) -> bytes:
    """`size` bytes of zeros as one gzip member (about size / 1000 bytes)."""
    out = io.BytesIO()
    zeros = bytes(1 << 20)
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as f:
        for _ in range(size >> 20):
            f.write(zeros)
    return out.getvalue()


def plant_non_files(root: Path, log_dir: Path, first: int = 40) -> dict[str, str]:
    """A FIFO (at a bundle key from `first`), a symlink to /dev/zero (at a
    checkpoint key), a symlinked directory, a dangling link and a name that is
    not UTF-8, in a local store's log; key -> what `verify` calls it."""
    entries, checkpoints = log_dir / "entries", log_dir / "checkpoints"
    fifo = entries / f"{first:020d}-{first + 9:020d}.jsonl"
    os.mkfifo(fifo)
    zero = checkpoints / f"{10**6:020d}"
    zero.symlink_to("/dev/zero")
    outside = log_dir / "claims2"
    outside.symlink_to("/")
    dangling = entries / "dangling"
    dangling.symlink_to(root / "nowhere")
    odd = os.fsencode(entries) + b"/\xff\xfe\x1b[2J"
    Path(os.fsdecode(odd)).write_bytes(b"")
    return {
        str(p.relative_to(root)): what
        for p, what in [
            (fifo, "bundle has no claim"),  # not opened at all
            (zero, "a symbolic link"),
            (outside, "not part of the log layout"),
            (dangling, "not part of the log layout"),
        ]
    }


PLANTED_CLAIMS = 400  # the review's attack 4: claims/N.e2 ... e400
# Names off the layout under a log (whoever can write the bucket names objects).
OFF_LAYOUT = [
    "entries/notes.txt",
    "x/y/z",
    "claims/" + "9" * 1000,
    "checkpoints/\x1b[2J\rVALID",
    "entries/line\nbreak",
    "\u202eevil",
]


def plant_claims(store: ObjectStore, log_id: str, position: int, count: int) -> None:
    """`count` claims at the writer's next position, epochs 1..count."""
    for epoch in range(1, count + 1):
        store.put_once(layout.claim_key(store.prefix, log_id, position, epoch), b"{}", None)


def plant_off_layout(store: ObjectStore, log_id: str, under: str = "") -> list[str]:
    """Objects named OFF_LAYOUT under the log (and the folder `under` in it); the
    keys planted (a file system holds no name of over 255 bytes: not those)."""
    keys = []
    for name in OFF_LAYOUT:
        key = f"{layout.log_prefix(store.prefix, log_id)}{under}{name}"
        if isinstance(store, LocalStore) and any(len(os.fsencode(p)) > 255 for p in key.split("/")):
            continue
        store.put_once(key, b"junk", None)
        keys.append(key)
    return keys


# --- Keys --------------------------------------------------------------------------------


def chained(fields: list[dict[str, Any]]) -> list[bytes]:
    """Entries as the writer encodes them: v, seq = position, prev chained."""
    out: list[bytes] = []
    prev = ""
    for seq, f in enumerate(fields):
        data = entry.encode({**f, "v": 1, "seq": seq, "prev": prev})
        out.append(data)
        prev = leaf_hash(data).hex()
    return out


def signed_checkpoint(
    signer: Signer, origin: str, entries: list[bytes], *, time_ms: int | None
) -> bytes:
    """A checkpoint over `entries`, its `time` line saying `time_ms` (None: none)."""
    extensions = () if time_ms is None else (f"time {time_ms}",)
    root = root_of([leaf_hash(e) for e in entries])
    return sign_checkpoint(Checkpoint(origin, len(entries), root, extensions), signer)


def inclusion(entries: list[bytes], index: int, checkpoint: bytes) -> TlogProof:
    """The tlog-proof of entry `index` under `checkpoint` (a tree of exactly `entries`)."""
    hashes = inclusion_proof([leaf_hash(e) for e in entries], index)
    return TlogProof(index, tuple(hashes), checkpoint, entries[index])


# The review's attack 8: whoever holds a retired key makes up an entry and signs
# a checkpoint over it, its time line backdated into the key's validity window.
MADE_UP_ENTRY = {
    "kind": "request",
    "rid": "made-up",
    "req": {"method": "DELETE", "path": FORGED_PATH},
    "src": {"principal": "spiffe://test.mesh/ns/admin/sa/ceo"},
}


def backdated_proof(signer: Signer, origin: str, time_ms: int, entries: int = 5) -> TlogProof:
    """A proof of MADE_UP_ENTRY (the last of `entries`) under a checkpoint by
    `signer` whose time line says `time_ms`."""
    fields = [{"kind": "request", "rid": f"r{i}"} for i in range(entries - 1)] + [MADE_UP_ENTRY]
    lines = chained(fields)
    note = signed_checkpoint(signer, origin, lines, time_ms=time_ms)
    return inclusion(lines, len(lines) - 1, note)


class Unlisted:
    """A store in which some keys are not listed (they are still there to read
    and to collide with): what a second deployment saw if it started before
    the first writer's checkpoints were listed, or what a writer without the
    fresh-WAL check did (it saw the log's objects as foreign and started over)."""

    def __init__(self, store: ObjectStore, hidden: set[str]) -> None:
        self._store, self._hidden = store, hidden

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def list(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        return (o for o in self._store.list(prefix, start_after) if o.key not in self._hidden)

    def versioned(self) -> Any:
        return self if self._store.versioned() is not None else None

    def versions(self, prefix: str, start_after: str = "") -> Iterator[ObjectVersion]:
        versioned = self._store.versioned()
        assert versioned is not None
        return (v for v in versioned.versions(prefix, start_after) if v.key not in self._hidden)


# --- Secrets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretRow:
    """One kind of secret: how it is sent, and what of it the log may show."""

    path: str
    secret: str
    headers: dict[str, str] = field(default_factory=dict)
    name: str = ""  # visible in the log (names stay)
    hashed: str = ""  # the exact value whose keyed hash the log holds ("" = the secret)


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJTRUMyMSJ9.c2lnU0VDMjE"
# The review's 25 kinds (and two more), each its own request through Envoy.
SECRET_ROWS = {
    # query parameters
    "query-accessToken": SecretRow(
        "/q?page=2&accessToken=SEC01qat", "SEC01qat", name="accessToken"
    ),
    "query-refreshToken": SecretRow("/q?refreshToken=SEC02qrt", "SEC02qrt", name="refreshToken"),
    "query-session_token": SecretRow("/q?session_token=SEC03qst", "SEC03qst", name="session_token"),
    "query-api_secret": SecretRow("/q?api_secret=SEC04qas", "SEC04qas", name="api_secret"),
    "query-auth-token": SecretRow("/q?auth-token=SEC05qat", "SEC05qat", name="auth-token"),
    "query-pass": SecretRow("/q?pass=SEC06qps", "SEC06qps", name="pass"),
    "query-password-nul": SecretRow("/q?password%00=SEC07qpn", "SEC07qpn", name="password%00"),
    "query-bare-part": SecretRow("/q?page=1&SEC23qbp", "SEC23qbp", name="page=1"),
    # path and URL parameters, fragments, userinfo
    "path-jsessionid": SecretRow("/cart;jsessionid=SEC08pjs/items", "SEC08pjs", name="jsessionid"),
    "referer-jsessionid": SecretRow(
        "/r", "SEC09rjs", {"referer": "https://shop.example/cart;jsessionid=SEC09rjs"}, "referer"
    ),
    "location-token": SecretRow("/redirect-token", "SEC10ltk", name="location"),
    "rejected-path-fragment": SecretRow(
        "/z#access_token=SEC11frg", "SEC11frg", name='"fragment"', hashed="access_token=SEC11frg"
    ),
    # (Envoy drops a Referer with a fragment or userinfo: these ride in response headers.)
    "content-location-fragment": SecretRow(
        "/fragment", "SEC24clf", name="content-location", hashed="access_token=SEC24clf"
    ),
    "location-userinfo": SecretRow("/userinfo", "SEC25lui", name="location"),
    # headers no deny-list named
    **{
        f"header-{name}": SecretRow("/h", secret, {name: secret}, name)
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
    "header-jwt-anywhere": SecretRow("/h", JWT, {"x-debug-context": JWT}, "x-debug-context"),
    "www-authenticate": SecretRow(
        "/challenge",
        "SEC22www",
        name="www-authenticate",
        hashed='error="invalid_token", error_description="SEC22www"',
    ),
}
# Response headers Envoy adds on these routes: both captures see them.
SECRET_RESPONSES = {
    "/redirect-token": ("location", "https://client.example/next;token=SEC10ltk?page=1"),
    "/challenge": (
        "www-authenticate",
        'Bearer error="invalid_token", error_description="SEC22www"',
    ),
    "/fragment": ("content-location", "https://app.example/cb#access_token=SEC24clf"),
    "/userinfo": ("location", "https://SEC25lui@git.example/org/repo"),
}
SECRET_LOGGED = sorted(
    {n for r in SECRET_ROWS.values() for n in r.headers} | {"referer", "user-agent"}
)
# Envoy answers this one itself (400); its local reply then reaches the ext_proc
# response phase with no request phase, which the server refuses (500).
ENVOY_REJECTS = "rejected-path-fragment"
# serve as the secrets are sent to it: both captures, every response header.
SECRET_SERVE_ARGS = ["--ext-proc-responses", "--response-headers", "*"]


def secret_forms(secret: str) -> list[bytes]:
    """The forms a secret could reach a file in: raw, percent-encoded, base64
    (padded, unpadded, URL-safe)."""
    data = secret.encode()
    b64 = base64.b64encode(data)
    forms = [data, quote(secret, safe="").encode(), b64, b64.rstrip(b"="),
             base64.urlsafe_b64encode(data).rstrip(b"=")]  # fmt: skip
    return list(dict.fromkeys(forms))


def send_secret(port: int, row: SecretRow) -> int:
    """The row's request through Envoy on `port`; the HTTP status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", row.path, headers=row.headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def secret_problems(row: SecretRow, hash_key: bytes, wal: bytes, published: bytes) -> list[str]:
    """What is wrong with how the log holds this row: any form of the secret in
    the WAL or the store, or its name or keyed hash missing from the store (then
    it was not logged at all, and its absence proves nothing)."""
    problems = [
        f"{form!r} in {where}"
        for form in secret_forms(row.secret)
        for where, data in (("the WAL", wal), ("the store", published))
        if form in data
    ]
    if row.name.encode() not in published:
        problems.append(f"its name {row.name} is not in the store")
    if stored_hash(hash_key, (row.hashed or row.secret).encode()).encode() not in published:
        problems.append("its keyed hash is not in the store")
    return problems


def patch_envoy_for_secrets(config: dict[str, Any]) -> None:
    """Log the rows' headers in the access log too, and answer the routes of
    SECRET_RESPONSES with their response header (Envoy adds it: both captures see it)."""
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    typed = hcm["typed_config"]
    als = typed["access_log"][0]["typed_config"]
    als["additional_request_headers_to_log"] = SECRET_LOGGED
    als["additional_response_headers_to_log"] = sorted({n for n, _ in SECRET_RESPONSES.values()})
    routes = typed["route_config"]["virtual_hosts"][0]["routes"]
    app = routes[-1]["route"]
    for prefix, (name, value) in SECRET_RESPONSES.items():
        routes.insert(
            0,
            {
                "match": {"prefix": prefix},
                "route": app,
                "response_headers_to_add": [{"header": {"key": name, "value": value}}],
            },
        )


# --- The auditor's view ------------------------------------------------------------------

# An entry's fields that rewrite the auditor's terminal: (fields, how a table row shows them).
TERMINAL_ESCAPES: dict[str, tuple[dict[str, str], str]] = {
    "ansi_escape_in_path": (
        {"path": "/api/\x1b[2J\x1b[Hall clear\x1b[0m"},
        "/api/\\x1b[2J\\x1b[Hall clear\\x1b[0m",
    ),
    "carriage_return_overwriting_a_column": (
        {"path": "/admin/drop-db\r2026-11-26T00:00:00.000000Z pod-a"},
        "/admin/drop-db\\r2026-11-26T00:00:00.000",
    ),
    "backspaces_erasing_the_path": (
        {"path": "/admin/export" + "\b" * 13 + "/health"},
        "/admin/export\\x08\\x08",
    ),
    "bidi_override_in_principal": (
        {"principal": "spiffe://cluster.local/sa/\u202enimda"},  # shows as .../sa/admin
        "spiffe://cluster.local/sa/\\u202enimda",
    ),
    "zero_width_space_in_principal": (
        {"principal": "spiffe://cluster.local/sa/ad\u200bmin"},
        "spiffe://cluster.local/sa/ad\\u200bmin",
    ),
    "newline_in_request_id": (
        {"rid": "rid-x\n2026-11-26T00:00:09.000000Z pod-a 99 request GET /forged"},
        "rid-x\\n2026-11-26T00:00:09.000000Z pod-a 99 request GET /forged",
    ),
    "line_separator_in_request_id": ({"rid": "rid-x\u2028forged"}, "rid-x\\u2028forged"),
    "tabs_shifting_columns_in_request_id": ({"rid": "rid-x\t\t500"}, "rid-x\\t\\t500"),
    "osc_title_in_request_id": ({"rid": "\x1b]0;audit OK\x07rid-x"}, "\\x1b]0;audit OK\\x07rid-x"),
    "conceal_attribute_as_method": ({"method": "\x1b[8m"}, "\\x1b[8m"),
    "c1_csi_and_del_in_path": ({"path": "/a\x9b2J\x7f"}, "/a\\x9b2J\\x7f"),
    "invisible_tag_character_in_path": ({"path": "/a\U000e0001b"}, "/a\\U000e0001b"),
    "backslash_posing_as_an_escape": ({"path": "/a\\x1b[2J"}, "/a\\\\x1b[2J"),
}

# --- Mistakes that look like success -----------------------------------------------------

MISTYPED_STORE_URLS = {
    "one slash": "s3:/bucket/mesh",  # the review's attack 9
    "no slash": "s3:bucket/mesh",
    "upper-case scheme": "S3://bucket/mesh",
    "no colon": "s3//bucket/mesh",
    "scheme as a folder": "s3/bucket/mesh",
    "https URL": "https://bucket.s3.amazonaws.com/mesh",
    "other scheme": "gs://bucket/mesh",
    "file URL, relative": "file://audit/store",
    "file URL, one slash": "file:/var/audit",
    "no bucket": "s3://",
    "not a bucket name": "s3://my bucket/mesh",
    "space before": " s3://bucket/mesh",
    "control character": "s3://bucket/mesh\x1b[2K",
    "empty": "",
}
NEWLINE_ORIGIN_PREFIX = "audit\nforged"  # the origin's second line would read as the tree size
