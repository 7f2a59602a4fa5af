"""Identity sources: who a stream's reporter is, from what its transport proved.

One source per listener (trust/policy.py picks it from the options), never a
fallback from one to another: a TLS stream without an identity is refused,
not asked for a header.

- `Certificate` (`mtls`): the verified client certificate's SPIFFE id, else
  its first URI SAN, else its subject (gRPC's auth-context values).
- `OwnSidecar` (`xfcc`): the element of `x-forwarded-client-cert` that the
  server's own sidecar wrote, on connections from that sidecar only.
- `UnixSocket` (`unix`): the socket path, on a volume only the proxy mounts.
- `Unauthenticated`: anyone, marked so (`--allow-unauthenticated`).

Each says what it reads of a stream (`needs_auth_context`, `needs_metadata`),
so the server asks gRPC for nothing else. Pure: values in, a Reporter or
ReporterRefused out.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from extproc.errors import ConfigError
from extproc.trust import xfcc
from extproc.trust.reporter import (
    AUTH_MTLS,
    AUTH_NONE,
    AUTH_UNIX,
    AUTH_XFCC,
    REFUSED_NO_IDENTITY,
    REFUSED_UNTRUSTED_PEER,
    REFUSED_XFCC_FOREIGN,
    REFUSED_XFCC_MALFORMED,
    Reporter,
    ReporterRefused,
)
from extproc.trust.xfcc import XFCC_HEADER

# Istio's sidecar forwards inbound connections to the application from these
# addresses (InboundPassthroughBindIpv4/Ipv6 in istio/istio pilot).
ISTIO_INBOUND_SOURCES = ("127.0.0.6/32", "::6/128")
# --xfcc-mode: the own sidecar's forward_client_cert_details (Envoy's names);
# the first, the default, leaves exactly one element.
XFCC_MODES = ("SANITIZE_SET", "APPEND_FORWARD")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
AuthContext = Mapping[str, Sequence[bytes]]


class IdentitySource(Protocol):
    """Names the reporter of a stream, or raises ReporterRefused."""

    needs_auth_context: ClassVar[bool]  # reads gRPC's auth context (TLS)
    needs_metadata: ClassVar[bool]  # reads the stream's metadata (headers)

    def identify(self, peer: str, auth: AuthContext, metadata: Iterable[Any]) -> Reporter: ...


def parse_networks(values: Iterable[str], option: str) -> tuple[IPNetwork, ...]:
    nets = []
    for value in values:
        try:
            nets.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as e:
            raise ConfigError(f"{option}: {value!r} is not an IP address or CIDR") from e
    return tuple(nets)


def peer_ip(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP of a gRPC peer string (`ipv4:1.2.3.4:5`, `ipv6:[::1]:5`), else None."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        host = rest.rpartition(":")[0]
    elif kind == "ipv6":
        host = rest.rpartition(":")[0].strip("[]").split("%", 1)[0]
    else:
        return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _first(auth: AuthContext, name: str) -> str:
    values = auth.get(name) or ()
    return values[0].decode("utf-8", "replace") if values else ""


def certificate_identity(auth: AuthContext) -> str:
    """The SPIFFE id of a verified client certificate, else its first URI SAN, else its subject."""
    return (
        _first(auth, "peer_spiffe_id") or _first(auth, "peer_uri") or _first(auth, "x509_subject")
    )


@dataclass(frozen=True)
class Certificate:
    """mTLS: the listener requires a client certificate from --client-ca."""

    needs_auth_context: ClassVar[bool] = True
    needs_metadata: ClassVar[bool] = False

    def identify(self, peer: str, auth: AuthContext, metadata: Iterable[Any]) -> Reporter:
        identity = certificate_identity(auth)
        if not identity:
            # gRPC core already refused handshakes without a valid certificate.
            raise ReporterRefused(REFUSED_NO_IDENTITY, "client certificate names no identity")
        return Reporter(AUTH_MTLS, identity, peer)


@dataclass(frozen=True)
class UnixSocket:
    """--listen unix:PATH on a volume only the proxy and the audit container mount."""

    path: str
    needs_auth_context: ClassVar[bool] = False
    needs_metadata: ClassVar[bool] = False

    def identify(self, peer: str, auth: AuthContext, metadata: Iterable[Any]) -> Reporter:
        return Reporter(AUTH_UNIX, f"unix:{self.path}", peer)


@dataclass(frozen=True)
class Unauthenticated:
    """Anyone; every entry says so (--allow-unauthenticated, development only)."""

    needs_auth_context: ClassVar[bool] = False
    needs_metadata: ClassVar[bool] = False

    def identify(self, peer: str, auth: AuthContext, metadata: Iterable[Any]) -> Reporter:
        return Reporter(AUTH_NONE, "", peer)


@dataclass(frozen=True)
class OwnSidecar:
    """The server behind its own sidecar (Istio), which terminates mTLS and
    writes the caller's certificate into x-forwarded-client-cert.

    Only connections from `networks` (--trust-xfcc-from: Istio's inbound
    source, 127.0.0.6) come through that proxy, so only there is the header
    the proxy's word. It is read by Envoy's own grammar (trust/xfcc.py), and
    anything ambiguous is refused, never guessed. `mode` (--xfcc-mode) states
    what the proxy does: SANITIZE_SET leaves exactly one element, its own;
    APPEND_FORWARD appends it to what the caller sent. The reporter is the
    URI of that element (the last), whose By= must match `by` (--xfcc-by, the
    server's own identity).
    """

    networks: tuple[IPNetwork, ...]
    by: str | None = None
    mode: str = XFCC_MODES[0]
    needs_auth_context: ClassVar[bool] = False
    needs_metadata: ClassVar[bool] = True

    def identify(self, peer: str, auth: AuthContext, metadata: Iterable[Any]) -> Reporter:
        ip = peer_ip(peer)
        if ip is None or not any(ip in net for net in self.networks):
            raise ReporterRefused(
                REFUSED_UNTRUSTED_PEER,
                f"connection from {peer} did not come through the server's own proxy "
                "(--trust-xfcc-from)",
            )
        own = self._own_element([m.value for m in metadata if m.key == XFCC_HEADER])
        uri = own.get("uri", "")
        if not uri:
            raise ReporterRefused(
                REFUSED_NO_IDENTITY,
                "no client certificate identity from the server's own proxy "
                f"({XFCC_HEADER} without URI=): is mTLS required on this port?",
            )
        return Reporter(AUTH_XFCC, uri, peer)

    def _own_element(self, values: list[Any]) -> dict[str, str]:
        """The element the server's own proxy wrote; refuses any header that
        has another reading, or holds an element that proxy did not write."""
        if not values:
            raise ReporterRefused(
                REFUSED_NO_IDENTITY,
                f"{XFCC_HEADER} missing: no client certificate reached the server's own proxy "
                "(is mTLS required on this port?)",
            )
        if len(values) > 1:
            raise ReporterRefused(
                REFUSED_XFCC_MALFORMED,
                f"{len(values)} {XFCC_HEADER} values: the server's own proxy writes one",
            )
        try:
            if not isinstance(values[0], str):
                raise xfcc.XfccError("not text")
            elements = xfcc.parse(values[0])
        except xfcc.XfccError as e:
            raise ReporterRefused(
                REFUSED_XFCC_MALFORMED, f"{XFCC_HEADER} is not in Envoy's grammar: {e}"
            ) from e
        if self.mode == "SANITIZE_SET" and len(elements) > 1:
            raise ReporterRefused(
                REFUSED_XFCC_FOREIGN,
                f"{XFCC_HEADER} holds {len(elements)} elements; the server's own proxy "
                "(SANITIZE_SET, --xfcc-mode) writes exactly one",
            )
        own = elements[-1]
        if self.by is not None and not fnmatch.fnmatchcase(own.get("by", ""), self.by):
            raise ReporterRefused(
                REFUSED_XFCC_FOREIGN,
                f"the last {XFCC_HEADER} element was not added by the server's own proxy "
                f"(By={own.get('by', '')!r}, --xfcc-by {self.by!r})",
            )
        return own
