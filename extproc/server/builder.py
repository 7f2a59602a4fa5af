"""One entry builder for both captures: ext_proc (server/capture.py) and the
access-log service (server/access.py) build their fields through this code.

Header names (lower-cased in ASCII, length-capped), the per-map count and
byte budgets (counted in bytes, before any decoding or redaction), repeated
headers (one value, field lines joined with ","), redaction and truncation,
the request line, the source and its XFCC-derived identity, the response
status, and the `reporter` field with what the reporter claims about itself.
So a header both captures carry is stored identically (tests/integration/test_builder.py
runs the same requests through real Envoy with both on).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, NamedTuple

from extproc import config, metrics
from extproc.core.fields import (
    ADDRESS,
    AUTH_NONE,
    AUTHORITY,
    B64,
    CLAIMED,
    CLUSTER,
    DST_MISMATCH,
    DST_PRINCIPAL,
    FRAGMENT,
    FROM,
    HEADERS,
    LOG,
    METHOD,
    NODE,
    PATH,
    PRINCIPAL,
    QUERY,
    REQ,
    RESP,
    RID,
    SAN,
    SCHEME,
    SRC,
    STATUS,
    STATUS_RAW,
    dotted,
)
from extproc.core.redact import CLEAR, RedactionPolicy, ascii_lower
from extproc.trust.policy import ReporterPolicy
from extproc.trust.reporter import Reporter
from extproc.trust.xfcc import XFCC_HEADER, xfcc_elements

MAX_HEADER_NAME_BYTES = 1024
REQUEST_ID = "x-request-id"
# Dotted paths `trunc` names (core/fields.py), joined once.
_SRC_ADDRESS = dotted(SRC, ADDRESS)
_SRC_PRINCIPAL = dotted(SRC, PRINCIPAL)
_STATUS_RAW = dotted(RESP, STATUS_RAW)


def byte_size(value: str | bytes) -> int:
    """A value's size in UTF-8 bytes (what the byte budgets count)."""
    if isinstance(value, bytes) or value.isascii():
        return len(value)
    return len(value.encode("utf-8", "surrogatepass"))


class HeaderMap(NamedTuple):
    """A header map as stored, and what the builder read from it."""

    pseudo: dict[str, str]  # pseudo-headers (`:path`, ...), decoded, never stored as headers
    stored: dict[str, Any]  # name -> stored value (str, or {"b64": ...})
    omitted: int  # headers not looked at (past the budgets, or with an absurd name)
    raw: dict[str, str | bytes]  # name -> the value as sent (repeats joined): identity only


class EntryBuilder:
    """The fields both captures build, under one redaction policy and one set of bounds."""

    def __init__(
        self,
        policy: RedactionPolicy,
        *,
        max_headers: int = config.MAX_HEADERS,
        max_header_bytes: int = config.MAX_HEADER_BYTES,
    ) -> None:
        self.policy = policy
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self._rid_clear = policy.kind(REQUEST_ID) == CLEAR

    def headers(
        self,
        pairs: Sequence[tuple[str, str | bytes]],
        total: int,
        section: str,
        trunc: list[str],
        keep: frozenset[str] | None = None,
    ) -> HeaderMap:
        """A header map as stored. `pairs` are (name, value) in order, at most
        max_headers of them (the caller slices before reading values); `total`
        is how many the message held. Values are bytes (ext_proc's raw_value)
        or str (the access log's), one kind per map.

        Bounds first: past max_headers headers or max_header_bytes (names and
        values, in bytes) the rest are counted, not read; a name over 1 KiB is
        counted and skipped. `keep` (response headers) selects names; pseudo-
        headers are returned apart. A repeated header is one value, its field
        lines joined with "," in order (RFC 9110 5.3; what Envoy's access log
        sends), then stored as the policy says.
        """
        pseudo: dict[str, str] = {}
        raw: dict[str, Any] = {}
        stored: dict[str, Any] = {}
        policy = self.policy
        store = policy.stored_header
        budget = self.max_header_bytes
        seen = skipped = 0
        max_headers = self.max_headers
        binary = bool(pairs) and isinstance(pairs[0][1], bytes)  # one kind per map
        for key, value in pairs:
            if seen == max_headers:
                break
            # byte_size() of name and value, written out: this loop is the hot path.
            budget -= len(key) + len(value)
            ascii_key = key.isascii()
            if not ascii_key:
                budget -= byte_size(key) - len(key)
            if not binary and not value.isascii():
                budget -= byte_size(value) - len(value)
            if budget < 0:
                break
            seen += 1
            if len(key) > MAX_HEADER_NAME_BYTES:
                skipped += 1
                continue
            # Names are case-insensitive: Envoy sends lower case, a forger may not.
            name = key.lower() if ascii_key else ascii_lower(key)
            if name[:1] == ":":
                if name not in pseudo:
                    pseudo[name] = (
                        value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                    )
                continue
            if keep is not None and name not in keep:
                continue
            previous = raw.get(name)
            if previous is not None:  # rare: joined, then stored again as one
                value = previous + (b"," if isinstance(value, bytes) else ",") + value
            raw[name] = value
            if isinstance(value, bytes):
                try:
                    text = value.decode()
                except UnicodeDecodeError:
                    hidden = policy.header_bytes(name, value)
                    if hidden is None:  # allowed in clear: the bytes as sent
                        stored[name] = {B64: base64.b64encode(value).decode()}
                        continue
                    text = hidden
            else:
                text = value
            stored[name], cut = store(name, text)
            if cut and (previous is None or dotted(section, HEADERS, name) not in trunc):
                trunc.append(dotted(section, HEADERS, name))
        omitted = total - seen + skipped
        if omitted:
            trunc.append(dotted(section, HEADERS, "*"))
        # tuple.__new__ is HeaderMap() without its Python-level __new__ (hot path).
        return tuple.__new__(HeaderMap, (pseudo, stored, omitted, raw))

    def bounded(self, value: str, path: str, trunc: list[str]) -> str:
        """A value stored in clear, cut to max_value_bytes (named in `trunc` if cut)."""
        if len(value) <= self.policy.short_chars:
            return value  # fits: the common case
        text, cut = self.policy.truncate(value)
        if cut:
            trunc.append(path)
        return text

    def request_line(
        self, method: str, scheme: str, authority: str, target: str, trunc: list[str]
    ) -> dict[str, Any]:
        """req.method/scheme/authority/path, and query and fragment when present:
        the target through the policy's URL parser, everything bounded."""
        policy = self.policy
        short = policy.short_chars
        path, query, fragment = policy.target(target, request=True)
        if "@" in authority:  # userinfo has no place in :authority; a forger's may
            authority = policy.target("//" + authority)[0][2:]
        req: dict[str, Any] = {
            METHOD: method,
            SCHEME: scheme,
            AUTHORITY: authority,
            PATH: path,
        }
        if query is not None:
            req[QUERY] = query
        if fragment is not None:
            req[FRAGMENT] = fragment
        if len(authority) > short or len(path) > short or query is not None or len(method) > short:
            for name, value in req.items():  # rare: something may be too long
                req[name] = self.bounded(value, dotted(REQ, name), trunc)
        elif len(scheme) > short:
            req[SCHEME] = self.bounded(scheme, dotted(REQ, SCHEME), trunc)
        return req

    def rid(self, rid: str, trunc: list[str]) -> str:
        """The request id as stored: the x-request-id header's policy, bounded."""
        if self._rid_clear and len(rid) <= self.policy.short_chars:
            return rid  # the common case
        stored, cut = self.policy.stored_header(REQUEST_ID, rid)
        if cut:
            trunc.append(RID)
        return stored

    def source(
        self,
        address: str,
        address_from: str,
        san: str,
        san_from: str,
        xfcc: str | bytes | None,
        trunc: list[str],
    ) -> dict[str, Any]:
        """The downstream peer, each identity with where it came from (`from`).

        The peer certificate's SAN, as the reporting Envoy verified it, comes
        first; else the URI= of the nearest element of the x-forwarded-client-
        cert header (as sent, whatever the policy stores), and the entry says so.
        """
        src: dict[str, Any] = {}
        origin: dict[str, str] = {}
        if address:
            src[ADDRESS] = self.bounded(address, _SRC_ADDRESS, trunc)
            origin[ADDRESS] = address_from
        if san:
            src[SAN] = src[PRINCIPAL] = self.bounded(san, _SRC_PRINCIPAL, trunc)
            origin[SAN] = origin[PRINCIPAL] = san_from
        elif xfcc:
            text = xfcc.decode("utf-8", "replace") if isinstance(xfcc, bytes) else xfcc
            elements = xfcc_elements(text)
            if uri := (elements[-1].get("uri") if elements else None):
                src[PRINCIPAL] = self.bounded(uri, _SRC_PRINCIPAL, trunc)
                origin[PRINCIPAL] = f"header:{XFCC_HEADER}"
        if origin:
            src[FROM] = origin
        return src

    def status(self, resp: dict[str, Any], text: str, trunc: list[str]) -> None:
        """resp.status from a :status value: three ASCII digits, 100-999
        (int() also takes "²00" and " 200"). Anything else is kept as data,
        `status: null` with `status_raw`, never an exception."""
        if len(text) == 3 and text.isascii() and text.isdigit() and text[0] != "0":
            resp[STATUS] = int(text)
            return
        resp[STATUS] = None
        if text:
            resp[STATUS_RAW] = self.bounded(text, _STATUS_RAW, trunc)


class Claims:
    """The `reporter` field of a stream's entries: the authenticated reporter
    (decided by the transport), beside what it claims about itself (`claimed`:
    node id, cluster, log name, the identity it served a request as), and the
    --reporter-is-destination check of that claim.

    Built once per stream; the field is shared by entries with equal claims,
    so a stream of one sidecar builds it once.
    """

    __slots__ = ("_base", "_key", "_last", "_mismatch", "_policy", "reporter")

    def __init__(
        self,
        reporter: Reporter,
        policy: ReporterPolicy | None = None,
        *,
        node: str = "",
        cluster: str = "",
        log: str = "",
    ) -> None:
        self.reporter = reporter
        self._policy = policy
        self._base = {k: v for k, v in ((CLUSTER, cluster), (LOG, log), (NODE, node)) if v}
        self._key: tuple[str, str] | None = None
        self._last: dict[str, Any] = {}
        self._mismatch = False

    def field(self, dst_principal: str = "", node: str = "") -> dict[str, Any]:
        """The entry's `reporter`; raises ReporterRefused when --reporter-is-destination
        refuse finds the reporter is not the identity the request was served as
        (or the reporter named none)."""
        if (dst_principal, node) == self._key:
            if self._mismatch:
                metrics.DESTINATION_MISMATCHES.inc()
            return self._last
        reporter = self.reporter
        fields: dict[str, Any] = dict(reporter.fields)
        claimed = dict(self._base)
        if node:
            claimed[NODE] = node
        if dst_principal:
            claimed[DST_PRINCIPAL] = dst_principal
        if claimed:
            fields[CLAIMED] = claimed
        policy = self._policy
        mismatch = policy is not None and not policy.check_destination(
            reporter, dst_principal or None
        )
        if mismatch:
            metrics.DESTINATION_MISMATCHES.inc()
            fields[DST_MISMATCH] = True
        self._key, self._last, self._mismatch = (dst_principal, node), fields, mismatch
        return fields


UNKNOWN_REPORTER = Reporter(AUTH_NONE, "", "")
