"""Who is reporting: decided by the transport, never by the message.

Every ingest stream (ext_proc, and the access-log service) is identified once,
when it opens, before any of its messages is read:

- `mtls`: the listener requires a client certificate (`serve --tls-cert
  --tls-key --client-ca`); the reporter is the certificate's SPIFFE id, else
  its first URI SAN, else its subject.
- `xfcc`: the server sits behind its own sidecar (Istio), which terminates
  mTLS and writes the caller's certificate into `x-forwarded-client-cert`.
  Only connections from `--trust-xfcc-from` addresses (Istio's inbound
  source, 127.0.0.6) come through that proxy, so only there is the header the
  proxy's word. The header is read by Envoy's own grammar (core/xfcc.py), and
  anything ambiguous is refused, never guessed. `--xfcc-mode` states what the
  proxy does: SANITIZE_SET (the default, and what the shipped StatefulSet
  pins) leaves exactly one element, the proxy's own; APPEND_FORWARD appends
  it to what the caller sent. The reporter is the URI of that element (the
  last), whose By= must match `--xfcc-by` (the server's own identity).
- `unix`: `--listen unix:PATH` on a volume only the proxy and the audit
  container mount; the socket path is the reporter.
- `unauthenticated`: none of the above, only with `--allow-unauthenticated`
  (local development): without it `serve` refuses to start. Every entry says
  so, and `verify` counts them.

`--allow-reporter GLOB` then admits only matching reporter ids; anyone else is
refused with PERMISSION_DENIED before anything is logged (docs/THREATS.md).
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extproc import config
from extproc.core import xfcc
from extproc.core.fields import AUTH, AUTH_MTLS, AUTH_NONE, AUTH_UNIX, AUTH_XFCC, ID, PEER
from extproc.errors import ConfigError

XFCC_HEADER = "x-forwarded-client-cert"
# Istio's sidecar forwards inbound connections to the application from these
# addresses (InboundPassthroughBindIpv4/Ipv6 in istio/istio pilot).
ISTIO_INBOUND_SOURCES = ("127.0.0.6/32", "::6/128")
DESTINATION_CHECKS = config.DESTINATION_CHECKS
XFCC_MODES = config.XFCC_MODES

# Refusal reasons: the label of extproc_audit_reporters_refused_total.
REFUSED_NOT_ALLOWED = "not_allowed"
REFUSED_UNTRUSTED_PEER = "untrusted_peer"
REFUSED_NO_IDENTITY = "no_identity"
REFUSED_DESTINATION = "destination_mismatch"
REFUSED_XFCC_MALFORMED = "xfcc_malformed"  # not Envoy's grammar: no one reading
REFUSED_XFCC_FOREIGN = "xfcc_foreign"  # an element the server's own proxy did not write
NEEDS_AUTHENTICATION = (
    "no authenticated reporters: give --tls-cert/--tls-key/--client-ca (mTLS), "
    "--trust-xfcc-from (behind the server's own sidecar) or --listen unix:PATH; "
    "--allow-unauthenticated takes anyone's entries (development only)"
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ReporterRefused(Exception):
    """A caller that may not write to the log; `reason` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Reporter:
    """The authenticated sender of a stream, as recorded in every entry."""

    auth: str
    id: str
    peer: str
    fields: dict[str, str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Built once per stream and shared by its entries (orjson encodes it each time).
        fields = {AUTH: self.auth, PEER: self.peer}
        if self.id:
            fields[ID] = self.id
        object.__setattr__(self, "fields", fields)

    @property
    def label(self) -> str:
        """The reporter in metric labels: its identity, else how it connected."""
        return self.id or self.auth


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


def _first(auth: Mapping[str, Sequence[bytes]], name: str) -> str:
    values = auth.get(name) or ()
    return values[0].decode("utf-8", "replace") if values else ""


def certificate_identity(auth: Mapping[str, Sequence[bytes]]) -> str:
    """The SPIFFE id of a verified client certificate, else its first URI SAN, else its subject."""
    return (
        _first(auth, "peer_spiffe_id") or _first(auth, "peer_uri") or _first(auth, "x509_subject")
    )


def xfcc_elements(value: str) -> list[dict[str, str]]:
    """The elements of an audited request's x-forwarded-client-cert header
    (core/xfcc.py: lower-case key -> value, oldest first), or none if the header
    is not in Envoy's grammar: what has no one reading names nobody."""
    try:
        return xfcc.parse(value)
    except xfcc.XfccError:
        return []


@dataclass(frozen=True)
class ReporterPolicy:
    """How the listener authenticates reporters, and which ones it admits."""

    transport: str = "plain"  # "tls" | "unix" | "plain"
    unix_path: str = ""
    trust_xfcc_from: tuple[IPNetwork, ...] = ()
    xfcc_by: str | None = None  # glob the proxy's own identity (By=) must match
    allow: tuple[str, ...] = ()  # globs over reporter ids; empty: any authenticated reporter
    destination: str = "off"  # reporter must be the destination's own proxy: off|record|refuse
    # What the own sidecar does with XFCC (Envoy's forward_client_cert_details):
    # SANITIZE_SET leaves exactly its own element; APPEND_FORWARD appends it.
    xfcc_mode: str = "SANITIZE_SET"
    # A plaintext listener without --trust-xfcc-from takes anyone's entries,
    # marked unauthenticated: only when asked for (development).
    allow_unauthenticated: bool = False

    def __post_init__(self) -> None:
        if self.transport not in ("tls", "unix", "plain"):
            raise ConfigError(f"unknown listener transport {self.transport!r}")
        if self.destination not in DESTINATION_CHECKS:
            raise ConfigError(
                f"--reporter-is-destination must be one of {', '.join(DESTINATION_CHECKS)}"
            )
        if self.xfcc_mode not in XFCC_MODES:
            raise ConfigError(f"--xfcc-mode must be one of {', '.join(XFCC_MODES)}")
        if self.xfcc_by is not None and not self.trust_xfcc_from:
            raise ConfigError("--xfcc-by needs --trust-xfcc-from")
        if not self.authenticated:
            if self.allow:
                raise ConfigError(
                    "--allow-reporter needs authenticated reporters: --tls-cert/--tls-key/"
                    "--client-ca, --trust-xfcc-from, or --listen unix:PATH"
                )
            if self.destination != "off":
                raise ConfigError("--reporter-is-destination needs authenticated reporters")
            if not self.allow_unauthenticated:
                raise ConfigError(NEEDS_AUTHENTICATION)

    @property
    def authenticated(self) -> bool:
        return self.transport in ("tls", "unix") or bool(self.trust_xfcc_from)

    @property
    def needs_auth_context(self) -> bool:
        return self.transport == "tls"

    @property
    def needs_metadata(self) -> bool:
        return self.transport == "plain" and bool(self.trust_xfcc_from)

    def identify(
        self,
        peer: str,
        auth: Mapping[str, Sequence[bytes]] | None = None,
        metadata: Iterable[Any] = (),
    ) -> Reporter:
        """The reporter of a stream; raises ReporterRefused if it may not report."""
        reporter = self._authenticate(peer, auth or {}, metadata)
        if self.allow and not any(fnmatch.fnmatchcase(reporter.id, g) for g in self.allow):
            raise ReporterRefused(
                REFUSED_NOT_ALLOWED, f"reporter {reporter.id!r} is not on the allow-list"
            )
        return reporter

    def _authenticate(
        self, peer: str, auth: Mapping[str, Sequence[bytes]], metadata: Iterable[Any]
    ) -> Reporter:
        if self.transport == "tls":
            identity = certificate_identity(auth)
            if not identity:
                # gRPC core already refused handshakes without a valid certificate.
                raise ReporterRefused(REFUSED_NO_IDENTITY, "client certificate names no identity")
            return Reporter(AUTH_MTLS, identity, peer)
        if self.transport == "unix":
            return Reporter(AUTH_UNIX, f"unix:{self.unix_path}", peer)
        if not self.trust_xfcc_from:
            return Reporter(AUTH_NONE, "", peer)
        ip = peer_ip(peer)
        if ip is None or not any(ip in net for net in self.trust_xfcc_from):
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
        if self.xfcc_mode == "SANITIZE_SET" and len(elements) > 1:
            raise ReporterRefused(
                REFUSED_XFCC_FOREIGN,
                f"{XFCC_HEADER} holds {len(elements)} elements; the server's own proxy "
                "(SANITIZE_SET, --xfcc-mode) writes exactly one",
            )
        own = elements[-1]
        if self.xfcc_by is not None and not fnmatch.fnmatchcase(own.get("by", ""), self.xfcc_by):
            raise ReporterRefused(
                REFUSED_XFCC_FOREIGN,
                f"the last {XFCC_HEADER} element was not added by the server's own proxy "
                f"(By={own.get('by', '')!r}, --xfcc-by {self.xfcc_by!r})",
            )
        return own

    def check_destination(self, reporter: Reporter, destination: str | None) -> bool:
        """False if the reporter is not the proxy of the workload the request went to.

        `destination` is the identity in the audited connection's local
        certificate (Envoy attribute connection.uri_san_local_certificate).
        Raises ReporterRefused in `refuse` mode, where a request that names no
        destination (plaintext inbound, an outbound request) is refused too.
        """
        if self.destination == "off" or (destination and destination == reporter.id):
            return True
        if not destination and self.destination == "record":
            return True  # nothing to compare: not marked
        if self.destination == "refuse":
            served = f"served as {destination!r}" if destination else "naming no destination"
            raise ReporterRefused(
                REFUSED_DESTINATION, f"reporter {reporter.id!r} reported a request {served}"
            )
        return False
