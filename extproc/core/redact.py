"""Redaction policy: what never reaches the log, applied before an entry exists.

Secrets are replaced by a marker, or by a keyed HMAC-SHA256 when an HMAC key
is configured, so investigators can tell equal tokens apart without learning
them. The key itself never appears in an entry, a log line or an error.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from extproc.errors import ConfigError

REDACTED = "[redacted]"
TRUNCATED_MARK = "...[truncated {} bytes]"

DEFAULT_REDACT_HEADERS = frozenset(
    {
        "api-key",  # Azure OpenAI, Azure AI Search
        "apikey",  # Supabase, Kong key-auth
        "authentication",  # a non-standard twin of authorization, seen in the wild
        "authorization",
        "cookie",
        "ocp-apim-subscription-key",  # Azure API Management
        "private-token",  # GitLab personal and project access tokens
        "proxy-authorization",
        "set-cookie",
        "x-access-token",
        "x-amz-copy-source-server-side-encryption-customer-key",  # S3 SSE-C: the AES key
        "x-amz-security-token",
        "x-amz-server-side-encryption-customer-key",  # S3 SSE-C: the AES key itself
        "x-amzn-oidc-accesstoken",  # AWS ALB OIDC: the IdP's access token, passed to targets
        "x-amzn-oidc-data",  # AWS ALB OIDC: signed claims that targets accept as identity
        "x-api-key",
        "x-api-token",
        "x-auth",
        "x-auth-request-access-token",  # oauth2-proxy --set-xauthrequest
        "x-auth-token",
        "x-client-secret",
        "x-csrf-token",
        "x-forwarded-access-token",  # oauth2-proxy --pass-access-token
        "x-functions-key",  # Azure Functions
        "x-gitlab-token",  # GitLab webhooks: the shared secret, sent as is
        "x-goog-api-key",  # Google APIs
        "x-goog-copy-source-encryption-key",  # GCS customer-supplied encryption key
        "x-goog-encryption-key",  # GCS customer-supplied encryption key
        "x-goog-iap-jwt-assertion",  # Google IAP: signed identity that backends accept
        "x-ms-encryption-key",  # Azure Blob customer-provided key
        "x-ms-token-aad-access-token",  # Azure App Service authentication
        "x-ms-token-aad-id-token",
        "x-ms-token-aad-refresh-token",
        "x-refresh-token",
        "x-registry-auth",  # Docker Engine API: base64 JSON holding a registry password
        "x-shopify-access-token",
        "x-vault-token",  # HashiCorp Vault
        "x-xsrf-token",  # Angular's CSRF header
    }
)
# Headers whose value is a URL (absolute, scheme-relative or relative): their
# query and fragment are redacted like the request query (RedactionPolicy.url).
DEFAULT_URL_HEADERS = frozenset(
    {
        "content-location",
        "location",  # redirects: OAuth's ?code= and #access_token= land here
        "referer",
        "x-envoy-original-path",  # Envoy after a path rewrite: the original :path, query included
        "x-forwarded-uri",  # Traefik forwardAuth, oauth2-proxy: the original request URI
        "x-original-uri",  # nginx auth_request setups
        "x-original-url",  # IIS URL Rewrite, nginx auth_request setups
    }
)
DEFAULT_REDACT_QUERY_PARAMS = frozenset(
    {
        "access_token",
        "actor_token",  # RFC 8693 token exchange
        "api-key",
        "api_key",
        "apikey",
        "assertion",  # RFC 7521-7523 assertion grants (SAML, JWT bearer)
        "auth",
        "auth_token",
        "client_assertion",  # RFC 7523 private_key_jwt client authentication
        "client_secret",
        "code",  # OAuth authorization code
        "code_verifier",  # PKCE (RFC 7636)
        "device_code",  # RFC 8628: the device polls the token endpoint with it
        "id_token",
        "jsessionid",
        "jwt",
        "key",  # Google APIs (?key=), many others
        "oauth_token",  # OAuth 1.0a
        "oauth_verifier",  # OAuth 1.0a
        "otp",
        "passcode",
        "passwd",
        "password",
        "phpsessid",
        "pin",
        "private_token",  # GitLab
        "pwd",
        "refresh_token",
        "saml",
        "samlrequest",  # SAML HTTP-Redirect binding (SAMLRequest, SAMLResponse)
        "samlresponse",
        "secret",
        "session",
        "sessionid",
        "sig",  # also Azure SAS; its other fields (sv, se, sp, ...) are not secret
        "signature",
        "subject_token",  # RFC 8693 token exchange
        "ticket",  # CAS service tickets
        "token",
        "x-amz-credential",
        "x-amz-security-token",
        "x-amz-signature",
        "x-api-key",
        "x-goog-credential",  # GCS V4 signed URLs
        "x-goog-signature",  # GCS V4 signed URLs
        "x_api_key",
    }
)
QUERY_MODES = ("sensitive", "all", "keep", "drop")
_AUTH_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,31}")
# The start of a URL with an authority: scheme:// or scheme-relative //.
_AUTHORITY_RE = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*:)?//")
# A fragment is read as parameters only if every part is name=value with a
# plain name (#access_token=...&state=...); anything else (#section,
# #/route?x=1, #!token, a padded base64 token) is one opaque value.
_FORM_NAME_RE = re.compile(r"[A-Za-z0-9_.~%+\[\]-]+")
_PAIR_SEP_RE = re.compile(r"[&;]")
# Bytes that were not UTF-8, as decoded with surrogateescape.
_ESCAPED_BYTE_RE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class RedactionPolicy:
    """What is redacted, and how (docs/FORMAT.md, "Redaction and truncation").

    Header and parameter names match case-insensitively: the name sets are
    lower-cased here whatever the caller passed, header() and header_bytes()
    lower-case the name they are given, and parameter names are compared
    lower-cased after percent-decoding.
    """

    redact_headers: frozenset[str] = DEFAULT_REDACT_HEADERS
    redact_query_params: frozenset[str] = DEFAULT_REDACT_QUERY_PARAMS
    query_mode: str = "sensitive"
    hmac_key: bytes | None = field(default=None, repr=False)
    max_value_bytes: int = 2048
    # URL-valued headers: their query and fragment are redacted (url()).
    url_headers: frozenset[str] = DEFAULT_URL_HEADERS
    # Every header name header() has work for (one set lookup on the hot path).
    watched_headers: frozenset[str] = field(init=False, repr=False, compare=False)
    # A string of at most this many characters fits max_value_bytes whatever its
    # characters (4 bytes each at most): truncate() has no work for it.
    short_chars: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.query_mode not in QUERY_MODES:
            raise ConfigError(f"--query-mode must be one of {', '.join(QUERY_MODES)}")
        if self.max_value_bytes < 64:
            raise ConfigError(f"--max-value-bytes must be at least 64, not {self.max_value_bytes}")
        if self.hmac_key is not None and len(self.hmac_key) < 16:
            raise ConfigError("the HMAC key (--hmac-key-file) must hold at least 16 bytes")
        for name in ("redact_headers", "redact_query_params", "url_headers"):
            lowered = frozenset(n.lower() for n in getattr(self, name))
            object.__setattr__(self, name, lowered)  # frozen: set once, here
        object.__setattr__(self, "watched_headers", self.redact_headers | self.url_headers)
        object.__setattr__(self, "short_chars", self.max_value_bytes // 4)

    def secret(self, value: str) -> str:
        """The stand-in for a secret value."""
        if self.hmac_key is None:
            return REDACTED
        digest = hmac.new(self.hmac_key, value.encode("utf-8", "surrogateescape"), hashlib.sha256)
        return "hmac-sha256:" + digest.hexdigest()

    def header(self, name: str, value: str) -> str:
        """A header value as stored: credentials redacted, URL-valued headers
        through url(), anything else unchanged.

        Capture passes lower-case names (Envoy sends them so, and capture
        lower-cases what a client talking straight to the gRPC port sends);
        the name is lower-cased here as well, so `Authorization` is redacted
        for any caller.
        """
        name = name.lower()
        if name not in self.watched_headers:
            return value
        if name not in self.redact_headers:
            return self.url(value)
        if name in ("authorization", "proxy-authorization"):
            # Keep the scheme (Basic, Bearer, AWS4-HMAC-SHA256): it is not secret
            # and tells an investigator what kind of credential was used.
            scheme, sep, credentials = value.partition(" ")
            if sep and _AUTH_SCHEME_RE.fullmatch(scheme):
                return f"{scheme} {self.secret(credentials)}"
            return self.secret(value)
        if name == "cookie":
            return "; ".join(self._cookie_pair(p) for p in value.split(";") if p.strip())
        if name == "set-cookie":
            return self._cookie_pair(value.split(";", 1)[0])
        return self.secret(value)

    def _cookie_pair(self, pair: str) -> str:
        cookie_name, sep, cookie_value = pair.strip().partition("=")
        return f"{cookie_name}={self.secret(cookie_value)}" if sep else self.secret(pair.strip())

    def stored_header(self, name: str, value: str) -> tuple[str, bool]:
        """A header value as an entry stores it: header(), then truncate(); and
        whether it was cut. `name` must be lower case. Both captures call this
        once per header: names with nothing to redact and values that fit cost
        no further call."""
        if name in self.watched_headers:
            value = self.header(name, value)
        if len(value) > self.short_chars:
            return self.truncate(value)
        return value, False

    def header_bytes(self, name: str, raw: bytes) -> str | None:
        """The stored text of a header value that is not UTF-8, or None when
        the policy has nothing to hide in that header (capture then stores
        {"b64": ...}).

        A credential becomes one marker (keyed on the raw bytes); a URL goes
        through url() and its remaining non-UTF-8 bytes are written as %XX, so
        no redacted value reaches the entry as base64. Lower-cases the name.
        """
        name = name.lower()
        if name in self.redact_headers:
            return self.secret(raw.decode("utf-8", "surrogateescape"))
        if name in self.url_headers:
            text = self.url(raw.decode("utf-8", "surrogateescape"))
            return _ESCAPED_BYTE_RE.sub(lambda m: f"%{ord(m.group()) - 0xDC00:02X}", text)
        return None

    def query(self, query: str) -> str | None:
        """The query string as stored (None: not stored at all).

        Parameters are separated by `&` or `;` (kept as sent); see _pairs().
        A `#` (browsers never send one, a forger may) starts a fragment,
        redacted as in url().
        """
        if self.query_mode == "keep" or not query:
            return query
        if self.query_mode == "drop":
            return None
        if "#" in query:
            text, _, fragment = query.partition("#")
            return self._pairs(text) + "#" + self._fragment(fragment)
        return self._pairs(query)

    def url(self, value: str) -> str:
        """A URL-valued header as stored; absolute, scheme-relative (`//host/p`)
        and relative (`/cb?code=x`) URLs alike, and never raises on garbage.

        Scheme, host and path stay. The userinfo is a credential whatever the
        query mode: `user:[redacted]@`, or `[redacted]@` for a user name alone
        (often a token: https://TOKEN@github.com). The query follows query_mode
        as the request query does; so does the fragment when it reads as
        name=value pairs (OAuth's #access_token=...&state=...), and any other
        fragment is one opaque secret, kept only by `keep`. `drop` removes
        query and fragment.
        """
        before, hsep, fragment = value.partition("#")
        base, qsep, query = before.partition("?")
        if "@" in base:
            base = self._userinfo(base)
        if self.query_mode == "keep":
            return base + qsep + query + hsep + fragment
        if self.query_mode == "drop":
            return base
        if qsep:
            base += "?" + self._pairs(query)
        if hsep:
            base += "#" + self._fragment(fragment)
        return base

    def _userinfo(self, base: str) -> str:
        """`base` (a URL without query and fragment) with its userinfo redacted."""
        start = _AUTHORITY_RE.match(base)
        if start is None:
            return base  # a relative reference has no authority
        end = len(base)
        for sep in "/\\":  # browsers end the authority at a backslash too
            found = base.find(sep, start.end())
            if found != -1:
                end = min(end, found)
        at = base.rfind("@", start.end(), end)
        if at == -1:
            return base
        user, colon, password = base[start.end() : at].partition(":")
        if colon and password:
            info = f"{user}:{self.secret(password)}"
        else:
            # A bare user, or one with an empty password, is the credential
            # itself (`https://<token>@host`, `https://<api key>:@host`).
            info = self.secret(user) + colon
        return base[: start.end()] + info + base[at:]

    def _pairs(self, text: str) -> str:
        """A name=value list (query, or fragment in that form) as stored: values
        of sensitive parameters (of all of them in `all`) redacted.

        Both `&` and `;` separate, and the separators stay as sent. Servers
        disagree on `;`, so both readings are covered: within one `&` segment,
        the `;` parts after a redacted value are redacted whole, since a
        server splitting on `&` only reads them as the rest of that value.
        Parts without `=` (`&flag`) are kept.
        """
        every = self.query_mode == "all"
        out = []
        for segment in text.split("&"):
            if ";" not in segment:
                name, sep, value = segment.partition("=")
                if sep and (every or self._sensitive(name)):
                    segment = f"{name}={self.secret(value)}"
                out.append(segment)
                continue
            parts = segment.split(";")
            for i, part in enumerate(parts):
                name, sep, value = part.partition("=")
                if sep and (every or self._sensitive(name)):
                    parts[i] = f"{name}={self.secret(value)}"
                    parts[i + 1 :] = [self.secret(p) if p else p for p in parts[i + 1 :]]
                    break
            out.append(";".join(parts))
        return "&".join(out)

    def _sensitive(self, raw_name: str) -> bool:
        """Is a parameter name on the list? Compared lower-cased, after
        percent-decoding and stripping blanks; `token[]` and `user[password]`
        (PHP, Rails array and nested forms) count as `token` and `password`."""
        name = unquote(raw_name).strip().lower()
        names = self.redact_query_params
        if name in names:
            return True
        if "[" not in name:
            return False
        outer, _, inner = name.partition("[")
        return outer in names or inner.rstrip("]").rpartition("[")[2] in names

    def _fragment(self, fragment: str) -> str:
        """A URL fragment as stored (query_mode is `sensitive` or `all`)."""
        if not fragment:
            return fragment
        parts = [p for p in _PAIR_SEP_RE.split(fragment) if p]
        for part in parts:
            name, _, value = part.partition("=")
            # A value that is empty or starts with "=" is base64 padding
            # (#dG9rZW4=), not a parameter: the whole fragment is one secret.
            if not value or value[0] == "=" or not _FORM_NAME_RE.fullmatch(name):
                return self.secret(fragment)
        return self._pairs(fragment) if parts else self.secret(fragment)

    def truncate(self, value: str) -> tuple[str, bool]:
        """Cut a value to max_value_bytes of UTF-8, with a marker saying how much went."""
        if len(value) <= self.short_chars:  # fits whatever the characters: hot path
            return value, False
        encoded = value.encode("utf-8", "surrogatepass")
        if len(encoded) <= self.max_value_bytes:
            return value, False
        kept = encoded[: self.max_value_bytes].decode("utf-8", "ignore")
        return kept + TRUNCATED_MARK.format(len(encoded) - len(kept.encode())), True
