"""Redaction policy: default-deny storage of values, applied before an entry exists.

A value is stored in clear only under a name known not to carry secrets (the
allow-lists below, widened by operators with --clear-header/--clear-param,
never by default). Every other value becomes a keyed hash under the
deployment's hash key (`hmac-sha256:<key id>:<digest>`, so an auditor holding
the key can answer "was this token used?") or `[redacted]` without a key.
Names stay visible. URLs (the request path, and every URL-valued header) go
through one parser: scheme, host and path segments stay, userinfo, `;`
path parameters, query values not allowed and the fragment are hashed
(docs/FORMAT.md, "Redaction"). The key never appears in an entry, a log line
or an error.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import unquote

from extproc.errors import ConfigError

REDACTED = "[redacted]"
TRUNCATED_MARK = "...[truncated {} bytes]"
HASH_SCHEME = "hmac-sha256"
HASH_HEX_CHARS = 32  # 128 bits of the HMAC-SHA-256 digest: collisions need ~2^64 values
MIN_HASH_KEY_BYTES = 16
# Key id = the first 4 bytes of HMAC-SHA-256(key, this label): names the key
# in every stored hash without revealing it.
_KEY_ID_LABEL = b"extproc-audit hash key id v1"

# Request and response headers whose values are stored in clear: each is
# defined by a standard or by Envoy to hold no credential (media types,
# sizes, dates, caching, content negotiation, tracing ids, addresses, the
# client's software). Exact names only, never prefixes: `accept-token` is not
# `accept`. Pseudo-headers (:method, :scheme, :authority, :status) are stored
# as entry fields; :path goes through the URL parser.
DEFAULT_CLEAR_HEADERS = frozenset(
    {
        # content negotiation and representation (RFC 9110)
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "allow",
        "content-encoding",
        "content-language",
        "content-length",
        "content-range",
        "content-type",
        "range",
        "te",
        "trailer",
        "transfer-encoding",
        "vary",
        # caching and conditional requests
        "age",
        "cache-control",
        "date",
        "etag",
        "expires",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "pragma",
        "retry-after",
        # connection and protocol
        "connection",
        "expect",
        "keep-alive",
        "upgrade",
        "via",
        "server",
        "user-agent",
        "grpc-accept-encoding",
        "grpc-encoding",
        "grpc-status",
        "grpc-timeout",
        # request ids and tracing (W3C trace context, Zipkin B3, AWS X-Ray, GCP)
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-flags",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-spanid",
        "x-b3-traceid",
        "x-amzn-trace-id",
        "x-cloud-trace-context",
        "x-request-id",
        # who and how: addresses and protocols, not secrets; the peer identity
        # (x-forwarded-client-cert holds certificates and SANs, all public)
        "forwarded",
        "x-forwarded-client-cert",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-proto",
        "x-real-ip",
        "x-envoy-attempt-count",
        "x-envoy-external-address",
        "x-envoy-expected-rq-timeout-ms",
        "x-envoy-upstream-service-time",
        # browser fetch metadata and CORS (fixed vocabularies, header names, methods)
        "access-control-allow-credentials",
        "access-control-allow-headers",
        "access-control-allow-methods",
        "access-control-expose-headers",
        "access-control-max-age",
        "access-control-request-headers",
        "access-control-request-method",
        "dnt",
        "sec-fetch-dest",
        "sec-fetch-mode",
        "sec-fetch-site",
        "sec-fetch-user",
        "upgrade-insecure-requests",
        "x-requested-with",
        # security policy switches (fixed vocabularies; not CSP: it carries nonces)
        "strict-transport-security",
        "x-content-type-options",
        "x-frame-options",
    }
)
# Headers whose value is a URL (absolute, scheme-relative or relative): stored
# through the URL parser (store_url), like the request path.
DEFAULT_URL_HEADERS = frozenset(
    {
        "access-control-allow-origin",
        "content-location",
        "location",  # redirects: OAuth's ?code= and #access_token= land here
        "origin",
        "referer",
        "x-envoy-original-path",  # Envoy after a path rewrite: the original :path
        "x-forwarded-uri",  # Traefik forwardAuth, oauth2-proxy: the original request URI
        "x-original-uri",  # nginx auth_request setups
        "x-original-url",  # IIS URL Rewrite, nginx auth_request setups
    }
)
# Query parameters whose values are stored in clear: pagination and
# presentation, whose values are numbers or words from the server's own
# vocabulary in every API we know of. Anything else (search terms, OAuth
# `state`, ids) is hashed: widen with --clear-param.
DEFAULT_CLEAR_PARAMS = frozenset(
    {"format", "lang", "limit", "offset", "order", "page", "page_size", "per_page", "sort"}
)
QUERY_MODES = ("sensitive", "all", "keep", "drop")  # the first: the default
MAX_VALUE_BYTES = 2048  # a header value stored in clear is cut to this (--max-value-bytes)

# How a header's value is stored (RedactionPolicy._kinds); a name not there is hashed whole.
CLEAR, URL, AUTH, COOKIE, SET_COOKIE, REFRESH = range(6)
# Credential headers whose scheme is kept (`Bearer <hash>`): the scheme is not
# secret and tells an investigator what kind of credential was used.
_AUTH_HEADERS = ("authorization", "proxy-authorization", "www-authenticate", "proxy-authenticate")
_STRUCTURED = {
    **dict.fromkeys(_AUTH_HEADERS, AUTH),
    "cookie": COOKIE,
    "set-cookie": SET_COOKIE,
    "refresh": REFRESH,
}
# Authentication schemes kept in clear before the hashed credentials (IANA's
# HTTP Authentication Scheme Registry and common vendor ones); any other first
# word may be part of the secret, so the value is hashed whole.
AUTH_SCHEMES = frozenset(
    {
        *("basic", "bearer", "concealed", "digest", "dpop", "gnap", "hoba", "mutual"),
        *("negotiate", "ntlm", "privatetoken", "scram-sha-1", "scram-sha-256", "vapid"),
        *("apikey", "aws4-hmac-sha256", "jwt", "oauth", "token"),
    }
)
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# Cookie pairs: RFC 6265's cookie-octet excludes both separators, and Envoy's
# access log joins repeated cookie headers with ",".
_COOKIE_SEP_RE = re.compile(r"([;,])")
# Set-Cookie lines joined with ",": a comma starts a new cookie only where a
# `name=` follows (not inside `Expires=Wed, 21 Oct 2026 ...`).
_SET_COOKIE_SPLIT_RE = re.compile(r",(?=[ \t]*[^ \t=;,]+=)")
_REFRESH_RE = re.compile(
    r"([ \t]*[0-9]+(?:\.[0-9]*)?[ \t]*)(?:([;,][ \t]*(?:url[ \t]*=[ \t]*)?)(.*))?",
    re.IGNORECASE | re.DOTALL,
)
# Bytes that were not UTF-8, as decoded with surrogateescape.
_ESCAPED_BYTE_RE = re.compile("[\udc80-\udcff]")
_TEMPLATE_VAR_RE = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


def hash_key_id(key: bytes) -> str:
    """The 8-hex id of a hash key, as stored in every hash made with it."""
    return hmac.digest(key, _KEY_ID_LABEL, "sha256")[:4].hex()


def check_hash_key(key: bytes) -> bytes:
    if len(key) < MIN_HASH_KEY_BYTES:
        raise ConfigError(f"the hash key must hold at least {MIN_HASH_KEY_BYTES} bytes")
    return key


def stored_hash(key: bytes, value: bytes) -> str:
    """The stored form of a value under a hash key: `hmac-sha256:<key id>:<32 hex>`
    (the first 128 bits of HMAC-SHA-256(key, value)). `extproc-audit hash-value`
    prints the same for a candidate value."""
    digest = hmac.digest(key, value, "sha256").hex()[:HASH_HEX_CHARS]
    return f"{HASH_SCHEME}:{hash_key_id(key)}:{digest}"


def ascii_lower(name: str) -> str:
    """A name lower-cased in ASCII only: no other character may fold into an
    allowed name (the Kelvin sign lower-cases to `k` in Unicode)."""
    if name.isascii():
        return name.lower()
    return "".join(c.lower() if c.isascii() else c for c in name)


def param_name(raw: str) -> str | None:
    """A parameter name as allow-lists compare it: percent-decoded (strictly:
    bytes that are not UTF-8 give None) and lower-cased; None also for any
    name that is not ASCII once decoded, so it is never on a list."""
    if "%" in raw:
        try:
            raw = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return None
    return raw.lower() if raw.isascii() else None


class UrlParts(NamedTuple):
    """A URL reference split as RFC 3986 reads it (browsers' backslashes too).

    `authority` is None without a `//`; `query` and `fragment` are None
    without their `?` and `#`. Joined back in order, the parts give the input.
    """

    scheme: str  # with its ":" or ""
    slashes: str  # "//" (or a backslash variant) before the authority, or ""
    userinfo: str | None  # before the last "@" of the authority
    hostport: str
    path: str
    query: str | None
    fragment: str | None


def split_url(value: str) -> UrlParts:
    """Split any string as a URL reference; never raises."""
    before, hsep, fragment = value.partition("#")
    base, qsep, query = before.partition("?")
    scheme = ""
    match = _SCHEME_RE.match(base)
    if match is not None:
        scheme = match.group()
        base = base[match.end() :]
    slashes = userinfo = None
    hostport = ""
    if base[:2] in ("//", "\\\\", "/\\", "\\/"):
        slashes, base = base[:2], base[2:]
        end = len(base)
        for sep in "/\\":  # browsers end the authority at a backslash too
            found = base.find(sep)
            if found != -1:
                end = min(end, found)
        authority, base = base[:end], base[end:]
        at = authority.rfind("@")
        if at != -1:
            userinfo, authority = authority[:at], authority[at + 1 :]
        hostport = authority
    return UrlParts(
        scheme,
        slashes or "",
        userinfo,
        hostport,
        base,
        query if qsep else None,
        fragment if hsep else None,
    )


@dataclass(frozen=True)
class RedactionPolicy:
    """What is stored in clear, and what is hashed (docs/FORMAT.md, "Redaction").

    Names match case-insensitively (ASCII): the sets are lower-cased here
    whatever the caller passed, header() lower-cases the name it is given,
    and parameter names are compared after percent-decoding (param_name()).
    """

    clear_headers: frozenset[str] = DEFAULT_CLEAR_HEADERS
    clear_params: frozenset[str] = DEFAULT_CLEAR_PARAMS
    # Forced: hashed even when allowed (--redact-header, --redact-query-param).
    redact_headers: frozenset[str] = frozenset()
    redact_query_params: frozenset[str] = frozenset()
    # URL-valued headers: stored through the URL parser (--redact-url-header adds).
    url_headers: frozenset[str] = DEFAULT_URL_HEADERS
    # Route templates whose `{name}` segments are hashed (--hash-path-template).
    path_templates: tuple[str, ...] = ()
    query_mode: str = QUERY_MODES[0]
    hmac_key: bytes | None = field(default=None, repr=False)
    max_value_bytes: int = MAX_VALUE_BYTES
    # How each header name is stored (CLEAR, URL, ...); absent: hashed whole.
    _kinds: dict[str, int] = field(init=False, repr=False, compare=False)
    _clear_params: frozenset[str] = field(init=False, repr=False, compare=False)
    _templates: tuple[tuple[str | None, ...], ...] = field(init=False, repr=False, compare=False)
    _key_id: str = field(init=False, repr=False, compare=False)
    # A string of at most this many characters fits max_value_bytes whatever its
    # characters (4 bytes each at most): truncate() has no work for it.
    short_chars: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.query_mode not in QUERY_MODES:
            raise ConfigError(f"--query-mode must be one of {', '.join(QUERY_MODES)}")
        if self.max_value_bytes < 64:
            raise ConfigError(f"--max-value-bytes must be at least 64, not {self.max_value_bytes}")
        if self.hmac_key is not None:
            check_hash_key(self.hmac_key)
        sets = ("clear_headers", "clear_params", "redact_headers", "redact_query_params")
        for name in (*sets, "url_headers"):
            lowered = frozenset(ascii_lower(n) for n in getattr(self, name))
            object.__setattr__(self, name, lowered)  # frozen: set once, here
        kinds = dict(_STRUCTURED)
        kinds.update(dict.fromkeys(self.url_headers, URL))
        kinds.update(dict.fromkeys(self.clear_headers, CLEAR))
        for name in self.redact_headers:
            if kinds.get(name) in (CLEAR, URL, REFRESH):
                del kinds[name]
        object.__setattr__(self, "_kinds", kinds)
        object.__setattr__(self, "_clear_params", self.clear_params - self.redact_query_params)
        object.__setattr__(
            self, "_templates", tuple(parse_path_template(t) for t in self.path_templates)
        )
        key_id = hash_key_id(self.hmac_key) if self.hmac_key is not None else ""
        object.__setattr__(self, "_key_id", key_id)
        object.__setattr__(self, "short_chars", self.max_value_bytes // 4)

    # --- values -----------------------------------------------------------------------------

    def secret(self, value: str) -> str:
        """The stored form of a value not known to be safe: its keyed hash, or
        the marker without a key. Empty stays empty (nothing to hide)."""
        if not value:
            return value
        if self.hmac_key is None:
            return REDACTED
        data = value.encode("utf-8", "surrogateescape")
        digest = hmac.digest(self.hmac_key, data, "sha256").hex()[:HASH_HEX_CHARS]
        return f"{HASH_SCHEME}:{self._key_id}:{digest}"

    def kind(self, name: str) -> int | None:
        """How a (lower-case) header's value is stored; None: hashed whole."""
        return self._kinds.get(name)

    def header(self, name: str, value: str) -> str:
        """A header value as stored (before truncation). Lower-cases the name."""
        kind = self._kinds.get(ascii_lower(name))
        if kind == CLEAR:
            return value
        if kind is None:
            return self.secret(value)
        return self._structured(kind, value)

    def _structured(self, kind: int, value: str) -> str:
        if kind == URL:
            return self.url(value)
        if kind == AUTH:
            scheme, sep, credentials = value.partition(" ")
            if sep and scheme.lower() in AUTH_SCHEMES:
                return f"{scheme} {self.secret(credentials)}"
            return self.secret(value)
        if kind == COOKIE:
            return "".join(
                part if part in (";", ",") else self._pair(part)
                for part in _COOKIE_SEP_RE.split(value)
            )
        if kind == SET_COOKIE:
            return ",".join(
                self._pair(line.partition(";")[0]) for line in _SET_COOKIE_SPLIT_RE.split(value)
            )
        # REFRESH: `<seconds>; url=<URL>` keeps the delay; the URL is a URL.
        match = _REFRESH_RE.fullmatch(value)
        if match is None:
            return self.secret(value)
        delay, sep, target = match.group(1, 2, 3)
        if not target:
            return delay + (sep or "")
        quote = target[0] if target[0] in "'\"" else ""
        close = quote if quote and len(target) > 1 and target.endswith(quote) else ""
        inner = target[len(quote) : len(target) - len(close)]
        return delay + sep + quote + self.url(inner) + close

    def _pair(self, pair: str) -> str:
        """`name=value` with the value hashed; a part without `=` is a value."""
        if not pair.strip():
            return pair
        name, sep, value = pair.partition("=")
        return f"{name}={self.secret(value)}" if sep else self.secret(pair)

    def stored_header(self, name: str, value: str) -> tuple[str, bool]:
        """A header value as an entry stores it: header(), then truncate(); and
        whether it was cut. `name` must be lower case (ascii_lower). Both
        captures call this once per header; an allowed value that fits costs
        one dict lookup and one length check."""
        kind = self._kinds.get(name)
        if kind != CLEAR:
            value = self.secret(value) if kind is None else self._structured(kind, value)
        if len(value) > self.short_chars:
            return self.truncate(value)
        return value, False

    def header_bytes(self, name: str, raw: bytes) -> str | None:
        """The stored text of a header value that is not UTF-8, or None when the
        value is allowed in clear (capture then stores {"b64": ...}).

        A hashed value is hashed over its raw bytes; a URL goes through url()
        and its remaining non-UTF-8 bytes are written as %XX, so nothing that
        is not allowed reaches the entry as base64. Lower-cases the name.
        """
        kind = self._kinds.get(ascii_lower(name))
        if kind == CLEAR:
            return None
        text = self.header(name, raw.decode("utf-8", "surrogateescape"))
        return _ESCAPED_BYTE_RE.sub(lambda m: f"%{ord(m.group()) - 0xDC00:02X}", text)

    # --- URLs: one parser for the request target and every URL-valued header ----------------

    def url(self, value: str) -> str:
        """A URL (absolute, scheme-relative `//host/p`, relative `/cb?code=x`,
        or garbage: never raises) as stored: target() joined again."""
        path, query, fragment = self.target(value)
        if query is not None:
            path += "?" + query
        if fragment is not None:
            path += "#" + fragment
        return path

    def target(self, value: str, *, request: bool = False) -> tuple[str, str | None, str | None]:
        """A URL, or with `request` a request target (`:path`, the access log's
        path), as stored: (everything before the query, query, fragment); query
        and fragment are None when absent or dropped. A request target that
        starts with "/" is a path (`//x` too: no authority in origin-form).

        Scheme, host, port and path segments stay; the userinfo (user and
        password each), every `;` path parameter value and the fragment are
        hashed; the query follows query_mode (`keep` keeps query and fragment,
        `drop` removes both).
        """
        origin_form = request and value[:1] == "/"
        if (
            (origin_form or (value[:1] == "/" and value[1:2] not in ("/", "\\")))
            and "?" not in value
            and "#" not in value
            and ";" not in value
            and not self._templates
        ):
            return value, None, None  # the common path: nothing to hide
        if origin_form:
            before, hsep, fragment = value.partition("#")
            path, qsep, query = before.partition("?")
            parts = UrlParts(
                "", "", None, "", path, query if qsep else None, fragment if hsep else None
            )
        else:
            parts = split_url(value)
        base = parts.scheme + parts.slashes
        if parts.userinfo is not None:
            user, colon, password = parts.userinfo.partition(":")
            base += self.secret(user) + colon + self.secret(password) + "@"
        base += parts.hostport + self.path(parts.path)
        return (base, *self.url_tail(parts.query, parts.fragment))

    def url_tail(self, query: str | None, fragment: str | None) -> tuple[str | None, str | None]:
        """A URL's query and fragment as stored under query_mode."""
        mode = self.query_mode
        if mode == "keep":
            return query, fragment
        if mode == "drop":
            return None, None
        return (
            None if query is None else self.query(query),
            None if fragment is None else self.secret(fragment),
        )

    def path(self, path: str) -> str:
        """Path segments in clear, `;name=value` parameters hashed (Tomcat's
        `;jsessionid=`), and the segments that a route template names hashed."""
        if ";" in path:
            path = "/".join(self._segment(s) if ";" in s else s for s in path.split("/"))
        if self._templates:
            path = self._templated(path)
        return path

    def _segment(self, segment: str) -> str:
        head, *params = segment.split(";")
        return ";".join([head, *(self._pair(p) if p else p for p in params)])

    def _templated(self, path: str) -> str:
        segments = path.split("/")
        # Compared as a server would route: decoded, case-folded, empty
        # segments (`//`) skipped; hashing more than asked is the safe side.
        index = [i for i, s in enumerate(segments) if s]
        names = [_route_name(segments[i]) for i in index]
        for template in self._templates:
            if len(template) != len(names):
                continue
            if all(t is None or t == n for t, n in zip(template, names, strict=True)):
                for t, i in zip(template, index, strict=True):
                    if t is None:  # the segment itself; its `;` parameters are hashed already
                        head, sep, params = segments[i].partition(";")
                        segments[i] = self.secret(head) + sep + params
                return "/".join(segments)
        return path

    def query(self, query: str) -> str | None:
        """A query string as stored (None: not stored at all, `drop`).

        `&` and `;` both separate parameters, and stay as sent. A value is in
        clear only under an allowed name (`sensitive`, the default); `all`
        hashes every value; a part without `=` is a value unless it is an
        allowed name. Servers disagree on `;`, so both readings are covered:
        within one `&` segment, the `;` parts after a hashed part are hashed
        whole, since a server splitting on `&` only reads them as the rest of
        that value.
        """
        mode = self.query_mode
        if mode == "keep" or not query:
            return query
        if mode == "drop":
            return None
        allowed = frozenset() if mode == "all" else self._clear_params
        out = []
        for segment in query.split("&"):
            parts = segment.split(";") if ";" in segment else [segment]
            hashing = False
            for i, part in enumerate(parts):
                if not part:
                    continue
                if hashing:
                    parts[i] = self.secret(part)
                    continue
                name, sep, value = part.partition("=")
                if param_name(name) in allowed:
                    continue
                parts[i] = f"{name}={self.secret(value)}" if sep else self.secret(part)
                hashing = True
            out.append(";".join(parts))
        return "&".join(out)

    def truncate(self, value: str) -> tuple[str, bool]:
        """Cut a value to max_value_bytes of UTF-8, with a marker saying how much went."""
        if len(value) <= self.short_chars:  # fits whatever the characters: hot path
            return value, False
        encoded = value.encode("utf-8", "surrogatepass")
        if len(encoded) <= self.max_value_bytes:
            return value, False
        kept = encoded[: self.max_value_bytes].decode("utf-8", "ignore")
        return kept + TRUNCATED_MARK.format(len(encoded) - len(kept.encode())), True


def _route_name(segment: str) -> str:
    name = segment.partition(";")[0]
    if "%" in name:
        name = unquote(name)
    return name.lower()


def parse_path_template(template: str) -> tuple[str | None, ...]:
    """`/reset/{token}` as segments: literals lower-cased, None for a `{name}`
    (one whole segment)."""
    if not template.startswith("/"):
        raise ConfigError(f"--hash-path-template {template!r} must start with /")
    segments: list[str | None] = []
    for segment in template.split("/"):
        if not segment:
            continue
        if _TEMPLATE_VAR_RE.fullmatch(segment):
            segments.append(None)
        elif "{" in segment or "}" in segment:
            raise ConfigError(
                f"--hash-path-template {template!r}: {{name}} must be a whole segment"
            )
        else:
            segments.append(_route_name(segment))
    if None not in segments:
        raise ConfigError(f"--hash-path-template {template!r} names no {{segment}} to hash")
    return tuple(segments)


def check_header_name(name: str, option: str) -> str:
    """A header name given on the command line, lower-cased; ConfigError if it is not a token."""
    lowered = name.strip().lower()
    if not _HEADER_NAME_RE.fullmatch(lowered):
        raise ConfigError(f"{option} {name!r} is not a header name")
    return lowered
