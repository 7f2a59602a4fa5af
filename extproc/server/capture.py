"""Turn ext_proc messages into audit entry fields (docs/FORMAT.md).

Runs on the request hot path: the headers are read once, no regexes, no
copies of values that are not stored. Names, bounds, repeated headers,
redaction, the request line, the source and the reporter field are built by
server/builder.py, which the access-log capture uses too. The Envoy
attributes read are those the filter config asks for (extproc/attributes.py).
"""

from __future__ import annotations

from itertools import islice
from typing import Any

from extproc import attributes, config
from extproc.core.fields import (
    CLAIMED,
    DST,
    DST_PRINCIPAL,
    HEADERS,
    HEADERS_OMITTED,
    NODE,
    PROTOCOL,
    REPORTER,
    REQ,
    RESP,
    RID,
    SRC,
    TRUNC,
    dotted,
)
from extproc.core.redact import RedactionPolicy
from extproc.server.builder import (
    REQUEST_ID,
    UNKNOWN_REPORTER,
    Claims,
    EntryBuilder,
    HeaderMap,
)
from extproc.trust.xfcc import XFCC_HEADER, xfcc_elements

# Where each identity came from (`src.from`).
_SOURCE_FROM = f"attribute:{attributes.SOURCE_ADDRESS}"
_PEER_SAN_FROM = f"attribute:{attributes.PEER_SAN}"
# Bounds per header map (extproc/config.py) apply before any decoding or
# redaction, so the cost of a message is bounded whatever its size
# (docs/THREATS.md); headers past them are counted, not stored.
DEFAULT_RESPONSE_HEADERS = config.RESPONSE_HEADERS
DEFAULT_MAX_HEADERS = config.MAX_HEADERS
DEFAULT_MAX_HEADER_BYTES = config.MAX_HEADER_BYTES
# Dotted paths `trunc` names (core/fields.py), joined once.
_PROTOCOL = dotted(REQ, PROTOCOL)
_CLAIMED_DST_PRINCIPAL = dotted(REPORTER, CLAIMED, DST_PRINCIPAL)
_CLAIMED_NODE = dotted(REPORTER, CLAIMED, NODE)


def _attributes(msg: Any) -> dict[str, Any]:
    """The attributes we asked for, looked up by name: a message stuffed with
    thousands of others costs no more than one with ours only."""
    if attributes.ATTR_NAMESPACE not in msg.attributes:
        return {}
    fields = msg.attributes[attributes.ATTR_NAMESPACE].fields
    out: dict[str, Any] = {}
    for key in attributes.REQUEST_ATTRIBUTES:
        if key not in fields:
            continue
        value = fields[key]
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            out[key] = value.string_value
        elif kind == "number_value":
            out[key] = value.number_value
        elif kind == "bool_value":
            out[key] = value.bool_value
    return out


class Capturer:
    """Builds entry fields from ext_proc messages, through the one entry
    builder the access-log capture uses too (server/builder.py)."""

    def __init__(
        self,
        policy: RedactionPolicy,
        response_headers: frozenset[str] | None = DEFAULT_RESPONSE_HEADERS,
        *,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    ) -> None:
        self.policy = policy
        self.builder = EntryBuilder(
            policy, max_headers=max_headers, max_header_bytes=max_header_bytes
        )
        # Response headers worth keeping (None: all). Fewer headers, less work
        # on the hot path; the status is always kept.
        self.response_headers = response_headers

    def headers(
        self,
        header_map: Any,
        section: str,
        trunc: list[str],
        keep: frozenset[str] | None = None,
    ) -> HeaderMap:
        """A HeaderMap as stored (EntryBuilder.headers). Envoy puts values in
        raw_value (bytes); `value` is for old proxies, read only when raw_value
        is empty. No more headers are read than the builder may look at."""
        items = header_map.headers
        limit = self.builder.max_headers
        pairs = [
            (h.key, h.raw_value or h.value.encode())
            for h in (items if len(items) <= limit else islice(items, limit))
        ]
        return self.builder.headers(pairs, len(items), section, trunc, keep)

    def request(self, msg: Any, claims: Claims | None = None) -> dict[str, Any]:
        """Fields of the request part of an exchange, from a request_headers message.

        `claims`: the stream's reporter (the `reporter` field, and the
        --reporter-is-destination check: may raise ReporterRefused).
        """
        builder = self.builder
        trunc: list[str] = []
        h = self.headers(msg.request_headers.headers, REQ, trunc)
        attrs = _attributes(msg)
        pseudo = h.pseudo
        req = builder.request_line(
            pseudo.get(":method", ""),
            pseudo.get(":scheme", ""),
            pseudo.get(":authority", ""),
            pseudo.get(":path", ""),
            trunc,
        )
        req[HEADERS] = h.stored
        if h.omitted:
            req[HEADERS_OMITTED] = h.omitted
        if isinstance(protocol := attrs.get(attributes.REQUEST_PROTOCOL), str) and protocol:
            req[PROTOCOL] = builder.bounded(protocol, _PROTOCOL, trunc)
        fields: dict[str, Any] = {
            REQ: req,
            SRC: builder.source(
                _text(attrs.get(attributes.SOURCE_ADDRESS)),
                _SOURCE_FROM,
                _text(attrs.get(attributes.PEER_SAN)),
                _PEER_SAN_FROM,
                h.raw.get(XFCC_HEADER),
                trunc,
            ),
        }
        # request.id is the client's x-request-id on internal traffic.
        rid = _text(attrs.get(attributes.REQUEST_ID)) or h.raw.get(REQUEST_ID) or ""
        fields[RID] = builder.rid(
            rid.decode("utf-8", "replace") if isinstance(rid, bytes) else rid, trunc
        )
        # Plain strings: top-level keys sorting before "prev" hold no objects
        # (the verifier's quick chain check relies on it, see core/verify.py).
        if address := _text(attrs.get(attributes.DESTINATION_ADDRESS)):
            fields[DST] = builder.bounded(address, DST, trunc)
        local = _text(attrs.get(attributes.LOCAL_SAN))
        node = _text(attrs.get(attributes.NODE_ID))
        fields[REPORTER] = (claims or Claims(UNKNOWN_REPORTER)).field(
            builder.bounded(local, _CLAIMED_DST_PRINCIPAL, trunc),
            builder.bounded(node, _CLAIMED_NODE, trunc),
        )
        if trunc:
            fields[TRUNC] = trunc
        return fields

    def response(self, msg: Any) -> dict[str, Any]:
        """Fields of the response part, from a response_headers message."""
        trunc: list[str] = []
        h = self.headers(msg.response_headers.headers, RESP, trunc, self.response_headers)
        resp: dict[str, Any] = {}
        self.builder.status(resp, h.pseudo.get(":status", ""), trunc)
        resp[HEADERS] = h.stored
        if h.omitted:
            resp[HEADERS_OMITTED] = h.omitted
        fields: dict[str, Any] = {RESP: resp}
        if trunc:
            fields[TRUNC] = trunc
        return fields


def _text(value: Any) -> str:
    """An attribute that should be a string: anything else counts as absent."""
    return value if isinstance(value, str) else ""


def xfcc_uris(xfcc: str) -> list[str]:
    """URI= values of an x-forwarded-client-cert header, one per element that has one,
    nearest proxy hop last."""
    return [e["uri"] for e in xfcc_elements(xfcc) if "uri" in e]
