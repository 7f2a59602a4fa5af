"""Entry field names and values, defined once (docs/FORMAT.md, "Entries").

Every module that builds an entry (server/builder.py, capture.py, access.py,
servicer.py; log/appender.py; the writer's own entries in log/publisher.py
and server/app.py) and every module that reads one (core/verify.py,
extproc/audit/) spells its keys through these names. Entries are a
contract: these strings are what published logs hold, and none of them ever
changes. A key that is the same string in two places (`node`, `cluster`,
`headers`) is one name.

How the encoder writes a member, for the quick byte scans that skip lines
before a parse decides, is core/scan.py's.
"""

from __future__ import annotations

from typing import Any, Final

# --- every entry ---------------------------------------------------------------------------
V: Final = "v"  # format version
SEQ: Final = "seq"
PREV: Final = "prev"  # the hash chain: hex leaf hash of entry seq-1
TS: Final = "ts"
KIND: Final = "kind"
RID: Final = "rid"  # the request id (x-request-id)

# --- request, response, exchange and access entries -------------------------------------
REPORTER: Final = "reporter"
REQ: Final = "req"
RESP: Final = "resp"
SRC: Final = "src"
DST: Final = "dst"
REF: Final = "ref"  # seq of the request entry an outcome belongs to
CONFLICT: Final = "conflict"  # seq of the request's first outcome, on a second one
OUTCOME: Final = "outcome"  # no response headers arrived (OUTCOME_* below)
TRUNC: Final = "trunc"  # dotted paths of the fields cut or dropped
UPSTREAM: Final = "upstream"
ROUTE: Final = "route"
FLAGS: Final = "flags"
TIMING: Final = "timing"
PARTIAL: Final = "partial"
NO_REQUEST: Final = "no_request"
# Written by earlier versions at the top level (now under reporter.claimed).
NODE: Final = "node"
DST_PRINCIPAL: Final = "dst_principal"
STREAM: Final = "stream"

# reporter.*: AUTH, ID and PEER from the transport; CLAIMED is what the reporter says.
AUTH: Final = "auth"
ID: Final = "id"
PEER: Final = "peer"
CLAIMED: Final = "claimed"  # NODE, CLUSTER, LOG, DST_PRINCIPAL
DST_MISMATCH: Final = "dst_mismatch"
CLUSTER: Final = "cluster"  # reporter.claimed, upstream
LOG: Final = "log"

# req.* and resp.*
METHOD: Final = "method"
SCHEME: Final = "scheme"
AUTHORITY: Final = "authority"
PATH: Final = "path"
QUERY: Final = "query"
FRAGMENT: Final = "fragment"
PROTOCOL: Final = "protocol"
HEADERS: Final = "headers"
HEADERS_OMITTED: Final = "headers_omitted"
BODY_BYTES: Final = "body_bytes"
ORIGINAL_PATH: Final = "original_path"
STATUS: Final = "status"
STATUS_RAW: Final = "status_raw"
DETAILS: Final = "details"
B64: Final = "b64"  # a header value that is not UTF-8: {"b64": base64 of its bytes}

# src.*: each identity, and in FROM where it came from.
ADDRESS: Final = "address"
PRINCIPAL: Final = "principal"
SAN: Final = "san"
FROM: Final = "from"

# upstream.* and timing.*
HOST: Final = "host"
FAILURE: Final = "failure"
START_MS: Final = "start_ms"
DURATION_US: Final = "duration_us"
UPSTREAM_TX_US: Final = "upstream_tx_us"

# --- writer entries ------------------------------------------------------------------------
EVENT: Final = "event"
WRITER: Final = "writer"  # the writer run id
VERSION: Final = "version"  # start: the server's version
MODE: Final = "mode"  # start: enforce or observe
KEY: Final = "key"  # start: the signing key, <name>+<key id>
OBJECT: Final = "object"  # foreign: one object
OBJECTS: Final = "objects"  # foreign: a sample of names ...
COUNT: Final = "count"  # ... and how many
EPOCH: Final = "epoch"
OLD_KEY: Final = "old_key"  # rotate
NEW_KEY: Final = "new_key"

# --- values --------------------------------------------------------------------------------
KIND_REQUEST: Final = "request"
KIND_RESPONSE: Final = "response"
KIND_EXCHANGE: Final = "exchange"  # both halves in one entry (earlier observe mode)
KIND_ACCESS: Final = "access"
KIND_WRITER: Final = "writer"
REQUEST_KINDS: Final = frozenset({KIND_REQUEST, KIND_EXCHANGE})  # the entries that carry a request

EVENT_START: Final = "start"
EVENT_HEARTBEAT: Final = "heartbeat"
EVENT_STOP: Final = "stop"
EVENT_FOREIGN: Final = "foreign"
EVENT_ROTATE: Final = "rotate"

OUTCOME_ABORTED: Final = "aborted"
OUTCOME_TIMEOUT: Final = "timeout"
OUTCOME_NO_RESPONSE: Final = "no_response"

# reporter.auth: how the server knows who sent the stream.
AUTH_MTLS: Final = "mtls"
AUTH_XFCC: Final = "xfcc"
AUTH_UNIX: Final = "unix"
AUTH_NONE: Final = "unauthenticated"


def dotted(*names: str) -> str:
    """A field's dotted path, as `trunc` names it (`req.headers.user-agent`)."""
    return ".".join(names)


def nested(fields: dict[str, Any], section: str, name: str) -> Any:
    """`fields[section][name]` of a parsed entry, None where either is missing
    or the section is not an object (entries are read as data, not trusted)."""
    part = fields.get(section)
    return part.get(name) if isinstance(part, dict) else None
