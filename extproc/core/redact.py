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

REDACTED = "[redacted]"
TRUNCATED_MARK = "...[truncated {} bytes]"

DEFAULT_REDACT_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "x-auth-token",
        "x-amz-security-token",
    }
)
DEFAULT_REDACT_QUERY_PARAMS = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "auth",
        "client_secret",
        "code",
        "id_token",
        "jwt",
        "key",
        "password",
        "passwd",
        "pwd",
        "refresh_token",
        "secret",
        "session",
        "sessionid",
        "sig",
        "signature",
        "token",
        "x-amz-credential",
        "x-amz-security-token",
        "x-amz-signature",
    }
)
QUERY_MODES = ("sensitive", "all", "keep", "drop")
_AUTH_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,31}")


@dataclass(frozen=True)
class RedactionPolicy:
    redact_headers: frozenset[str] = DEFAULT_REDACT_HEADERS
    redact_query_params: frozenset[str] = DEFAULT_REDACT_QUERY_PARAMS
    query_mode: str = "sensitive"
    hmac_key: bytes | None = field(default=None, repr=False)
    max_value_bytes: int = 2048

    def __post_init__(self) -> None:
        if self.query_mode not in QUERY_MODES:
            raise ValueError(f"query mode must be one of {', '.join(QUERY_MODES)}")

    def secret(self, value: str) -> str:
        """The stand-in for a secret value."""
        if self.hmac_key is None:
            return REDACTED
        digest = hmac.new(self.hmac_key, value.encode("utf-8", "surrogateescape"), hashlib.sha256)
        return "hmac-sha256:" + digest.hexdigest()

    def header(self, name: str, value: str) -> str:
        """Redact a (lower-case) header value if the policy says so."""
        if name not in self.redact_headers:
            return value
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

    def query(self, query: str) -> str | None:
        """The query string as stored (None: not stored at all)."""
        if self.query_mode == "keep" or not query:
            return query
        if self.query_mode == "drop":
            return None
        out = []
        for part in query.split("&"):
            name, sep, value = part.partition("=")
            sensitive = (
                self.query_mode == "all" or unquote(name).lower() in self.redact_query_params
            )
            out.append(f"{name}={self.secret(value)}" if sep and sensitive else part)
        return "&".join(out)

    def truncate(self, value: str) -> tuple[str, bool]:
        """Cut a value to max_value_bytes of UTF-8, with a marker saying how much went."""
        if len(value) * 4 <= self.max_value_bytes:  # fits whatever the characters: hot path
            return value, False
        encoded = value.encode("utf-8", "surrogatepass")
        if len(encoded) <= self.max_value_bytes:
            return value, False
        kept = encoded[: self.max_value_bytes].decode("utf-8", "ignore")
        return kept + TRUNCATED_MARK.format(len(encoded) - len(kept.encode())), True
