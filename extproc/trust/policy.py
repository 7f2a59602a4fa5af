"""Who may report: decided by the transport, never by the message.

Every ingest stream (ext_proc, and the access-log service) is identified once,
when it opens, before any of its messages is read. The listener's transport
picks one identity source (trust/sources.py):

- `mtls`: a client certificate is required (`serve --tls-cert --tls-key
  --client-ca`); the reporter is the certificate's identity.
- `xfcc`: the server sits behind its own sidecar (Istio) and trusts the
  element of `x-forwarded-client-cert` that sidecar wrote, on connections from
  `--trust-xfcc-from` only (`--xfcc-mode`, `--xfcc-by`).
- `unix`: `--listen unix:PATH`; the socket path is the reporter.
- `unauthenticated`: none of the above, only with `--allow-unauthenticated`
  (local development): without it `serve` refuses to start. Every entry says
  so, and `verify` counts them.

`--allow-reporter GLOB` then admits only matching reporter ids; anyone else is
refused with PERMISSION_DENIED before anything is logged. Per request,
`--reporter-is-destination` checks that the reporter is the proxy of the
workload the request was served by (docs/THREATS.md).

Pure: no gRPC, no I/O, no clock. The server hands in what the transport
proved (server/identify.py).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from extproc.errors import ConfigError
from extproc.trust.reporter import (
    REFUSED_DESTINATION,
    REFUSED_NOT_ALLOWED,
    Reporter,
    ReporterRefused,
)
from extproc.trust.sources import (
    XFCC_MODES,
    AuthContext,
    Certificate,
    IdentitySource,
    IPNetwork,
    OwnSidecar,
    Unauthenticated,
    UnixSocket,
)

DESTINATION_CHECKS = ("off", "record", "refuse")  # --reporter-is-destination
NEEDS_AUTHENTICATION = (
    "no authenticated reporters: give --tls-cert/--tls-key/--client-ca (mTLS), "
    "--trust-xfcc-from (behind the server's own sidecar) or --listen unix:PATH; "
    "--allow-unauthenticated takes anyone's entries (development only)"
)


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
    xfcc_mode: str = XFCC_MODES[0]
    # A plaintext listener without --trust-xfcc-from takes anyone's entries,
    # marked unauthenticated: only when asked for (development).
    allow_unauthenticated: bool = False
    source: IdentitySource = field(init=False, compare=False, repr=False)

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
        source: IdentitySource
        if self.transport == "tls":
            source = Certificate()
        elif self.transport == "unix":
            source = UnixSocket(self.unix_path)
        elif self.trust_xfcc_from:
            source = OwnSidecar(self.trust_xfcc_from, self.xfcc_by, self.xfcc_mode)
        else:
            source = Unauthenticated()
        object.__setattr__(self, "source", source)

    @property
    def authenticated(self) -> bool:
        return self.transport in ("tls", "unix") or bool(self.trust_xfcc_from)

    def identify(
        self,
        peer: str,
        auth: AuthContext | None = None,
        metadata: Iterable[Any] = (),
    ) -> Reporter:
        """The reporter of a stream; raises ReporterRefused if it may not report."""
        reporter = self.source.identify(peer, auth or {}, metadata)
        if self.allow and not any(fnmatch.fnmatchcase(reporter.id, g) for g in self.allow):
            raise ReporterRefused(
                REFUSED_NOT_ALLOWED, f"reporter {reporter.id!r} is not on the allow-list"
            )
        return reporter

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
