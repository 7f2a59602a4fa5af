"""Turn ext_proc messages into audit entry fields (docs/FORMAT.md).

Runs on the request hot path: one pass over the headers, no regexes, no
copies of values that are not stored.
"""

from __future__ import annotations

import base64
from typing import Any

from extproc import config
from extproc.core.redact import RedactionPolicy
from extproc.server.reporters import XFCC_HEADER, xfcc_elements

# Envoy attributes we ask for (envoy/*.yaml request_attributes). Never
# `xds.node`: it is an 80 KB text dump; `xds.node.id` is the CEL field we need.
# (`source.principal` is not an Envoy attribute: the peer's identity is the
# URI SAN of its certificate, connection.uri_san_peer_certificate.)
ATTR_NAMESPACE = "envoy.filters.http.ext_proc"
REQUEST_ATTRIBUTES = (
    "request.id",
    "request.protocol",
    "source.address",
    "destination.address",
    "connection.uri_san_peer_certificate",
    "connection.uri_san_local_certificate",
    "xds.node.id",
)
PEER_SAN = "connection.uri_san_peer_certificate"
LOCAL_SAN = "connection.uri_san_local_certificate"
XFCC = XFCC_HEADER
REQUEST_ID = "x-request-id"
# Bounds per header map (extproc/config.py) apply before any decoding or
# redaction, so the cost of a message is bounded whatever its size
# (docs/THREATS.md); headers past them are counted, not stored.
DEFAULT_RESPONSE_HEADERS = config.RESPONSE_HEADERS
DEFAULT_MAX_HEADERS = config.MAX_HEADERS
DEFAULT_MAX_HEADER_BYTES = config.MAX_HEADER_BYTES
MAX_HEADER_NAME_BYTES = 1024


def _attributes(msg: Any) -> dict[str, Any]:
    """The attributes we asked for, looked up by name: a message stuffed with
    thousands of others costs no more than one with ours only."""
    if ATTR_NAMESPACE not in msg.attributes:
        return {}
    fields = msg.attributes[ATTR_NAMESPACE].fields
    out: dict[str, Any] = {}
    for key in REQUEST_ATTRIBUTES:
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
    """Builds entry fields from header maps under a redaction policy."""

    def __init__(
        self,
        policy: RedactionPolicy,
        response_headers: frozenset[str] | None = DEFAULT_RESPONSE_HEADERS,
        *,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    ) -> None:
        self.policy = policy
        # Response headers worth keeping (None: all). Fewer headers, less work
        # on the hot path; the status is always kept.
        self.response_headers = response_headers
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes

    def headers(
        self,
        header_map: Any,
        section: str,
        trunc: list[str],
        keep: frozenset[str] | None = None,
    ) -> tuple[dict[str, str], dict[str, Any], int]:
        """Split a HeaderMap into pseudo-headers and redacted, truncated headers.

        Returns (pseudo, headers, omitted): headers past max_headers or
        max_header_bytes (or with an absurd name) are not looked at, only counted.
        """
        policy = self.policy
        pseudo: dict[str, str] = {}
        headers: dict[str, Any] = {}
        items = header_map.headers
        budget, max_headers = self.max_header_bytes, self.max_headers
        seen = skipped = 0
        for h in items:
            if seen == max_headers:
                break
            seen += 1
            raw = h.raw_value
            old_value = h.value
            # Names are case-insensitive: Envoy sends lower case, a forger may not,
            # and redaction must match either way.
            name = h.key.lower()
            budget -= len(name) + len(raw) + len(old_value)
            if budget < 0:
                seen -= 1
                break
            is_pseudo = name.startswith(":")
            if keep is not None and not is_pseudo and name not in keep:
                continue
            if len(name) > MAX_HEADER_NAME_BYTES:
                skipped += 1
                continue
            # Envoy puts header values in raw_value (bytes); `value` is for old proxies.
            value: Any
            if raw:
                try:
                    value = raw.decode("utf-8")
                except UnicodeDecodeError:
                    value = {"b64": base64.b64encode(raw).decode()}
            else:
                value = old_value
            if is_pseudo:
                pseudo[name] = value if isinstance(value, str) else ""
                continue
            if isinstance(value, str):
                value, cut = policy.stored_header(name, value)
                if cut:
                    trunc.append(f"{section}.headers.{name}")
            elif (redacted := policy.header_bytes(name, raw)) is not None:
                # Not UTF-8 but a secret or a URL: never store its bytes, not even as b64.
                value, cut = policy.truncate(redacted)
                if cut:
                    trunc.append(f"{section}.headers.{name}")
            if name in headers:
                previous = headers[name]
                if isinstance(previous, list):
                    previous.append(value)
                else:
                    headers[name] = [previous, value]
            else:
                headers[name] = value
        omitted = len(items) - seen + skipped
        if omitted:
            trunc.append(f"{section}.headers.*")
        return pseudo, headers, omitted

    def request(self, msg: Any) -> dict[str, Any]:
        """Fields of the request part of an exchange, from a request_headers message."""
        trunc: list[str] = []
        pseudo, headers, omitted = self.headers(msg.request_headers.headers, "req", trunc)
        attrs = _attributes(msg)
        full_path = pseudo.get(":path", "")
        path, sep, query = full_path.partition("?")
        req: dict[str, Any] = {
            "method": pseudo.get(":method", ""),
            "scheme": pseudo.get(":scheme", ""),
            "authority": pseudo.get(":authority", ""),
            "path": path,
            "headers": headers,
        }
        if omitted:
            req["headers_omitted"] = omitted
        if sep:
            stored_query = self.policy.query(query)
            if stored_query is not None:
                req["query"], cut = self.policy.truncate(stored_query)
                if cut:
                    trunc.append("req.query")
        short = self.policy.short_chars
        for name in ("path", "authority", "method", "scheme"):
            if len(req[name]) > short:
                req[name], cut = self.policy.truncate(req[name])
                if cut:
                    trunc.append(f"req.{name}")
        if protocol := attrs.get("request.protocol"):
            req["protocol"] = self._bounded(protocol, "req.protocol", trunc)
        fields: dict[str, Any] = {"req": req, "src": self._source(attrs, headers, trunc)}
        rid = attrs.get("request.id") or headers.get(REQUEST_ID)
        # request.id is the client's x-request-id on internal traffic: bound it.
        fields["rid"], cut = self.policy.truncate(rid if isinstance(rid, str) else "")
        if cut:
            trunc.append("rid")
        # Plain strings: top-level keys sorting before "prev" hold no objects
        # (the verifier's quick chain check relies on it, see core/verify.py).
        if address := attrs.get("destination.address"):
            fields["dst"] = self._bounded(address, "dst", trunc)
        if local := attrs.get(LOCAL_SAN):
            fields["dst_principal"] = self._bounded(local, "dst_principal", trunc)
        if node := attrs.get("xds.node.id"):
            fields["node"] = self._bounded(node, "node", trunc)
        if trunc:
            fields["trunc"] = trunc
        return fields

    def _bounded(self, value: Any, path: str, trunc: list[str]) -> str:
        if isinstance(value, str) and len(value) <= self.policy.short_chars:
            return value  # fits: the common case
        text, cut = self.policy.truncate(value if isinstance(value, str) else str(value))
        if cut:
            trunc.append(path)
        return text

    def _source(
        self, attrs: dict[str, Any], headers: dict[str, Any], trunc: list[str]
    ) -> dict[str, Any]:
        """The downstream peer, each identity with where it came from (`from`)."""
        src: dict[str, Any] = {}
        origin: dict[str, str] = {}
        if address := attrs.get("source.address"):
            src["address"] = self._bounded(address, "src.address", trunc)
            origin["address"] = "attribute:source.address"
        if san := attrs.get(PEER_SAN):
            # The certificate the audited connection's peer presented, as Envoy verified it.
            src["san"] = src["principal"] = self._bounded(san, "src.principal", trunc)
            origin["san"] = origin["principal"] = f"attribute:{PEER_SAN}"
        elif isinstance(xfcc := headers.get(XFCC), str):
            # Behind a gateway or another proxy hop, the peer identity arrives as
            # the URI= of the nearest XFCC element: a header, and the entry says so.
            elements = xfcc_elements(xfcc)
            if uri := (elements[-1].get("uri") if elements else None):
                src["principal"] = self._bounded(uri, "src.principal", trunc)
                origin["principal"] = f"header:{XFCC}"
        if origin:
            src["from"] = origin
        return src

    def response(self, msg: Any) -> dict[str, Any]:
        """Fields of the response part, from a response_headers message."""
        trunc: list[str] = []
        pseudo, headers, omitted = self.headers(
            msg.response_headers.headers, "resp", trunc, self.response_headers
        )
        status_text = pseudo.get(":status", "")
        resp: dict[str, Any] = {
            "status": int(status_text) if status_text.isdigit() and len(status_text) == 3 else None,
            "headers": headers,
        }
        if omitted:
            resp["headers_omitted"] = omitted
        fields: dict[str, Any] = {"resp": resp}
        if trunc:
            fields["trunc"] = trunc
        return fields


def xfcc_uris(xfcc: str) -> list[str]:
    """URI= values of an x-forwarded-client-cert header, one per element that has one,
    nearest proxy hop last."""
    return [e["uri"] for e in xfcc_elements(xfcc) if "uri" in e]
